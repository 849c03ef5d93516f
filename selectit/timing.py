"""Where a command's time goes: named phases added up for the whole process (`selectit score -v`);
and how much is left of a scoring run (`TimeLeft`, which `selectit score`'s bars show).

The phases are recorded wherever the work happens (the CLI, the runner, the model loader) with
`with phase("scoring"): ...`; `breakdown(total)` turns them into lines, the time not covered by
any phase shown as `other`. Nested phases are named `outer: inner` and listed under their outer
phase; only top-level phases add up to the total.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: Seconds per phase, in order of first use (this process).
PHASES: dict[str, float] = {}


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Add the time spent in the block to phase `name`."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        PHASES[name] = PHASES.get(name, 0.0) + time.perf_counter() - t0


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), None where unknown."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime", encoding="ascii") as f:
            uptime = float(f.read().split()[0])
        return max(uptime - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None


def breakdown(total: float) -> list[str]:
    """One line per phase (seconds and share of `total`), nested phases indented, then `other`."""
    width = max([len(n) for n in PHASES] + [5])
    lines, covered = [], 0.0
    tops = [n for n in PHASES if ": " not in n]
    for name in tops:
        covered += PHASES[name]
        lines.append(f"  {name:<{width + 2}} {PHASES[name]:8.2f} s  {PHASES[name] / max(total, 1e-9):6.1%}")
        for sub in (n for n in PHASES if n.startswith(name + ": ")):
            label = "  " + sub[len(name) + 2:]
            lines.append(f"  {label:<{width + 2}} {PHASES[sub]:8.2f} s")
    other = max(total - covered, 0.0)
    lines.append(f"  {'other':<{width + 2}} {other:8.2f} s  {other / max(total, 1e-9):6.1%}")
    return lines


class TimeLeft:
    """A scoring run's time left: the tokens left ÷ the smoothed tokens per second, or — when the
    tokens are not known (no total at the start, or a report without them) — the cells left ÷ the
    smoothed cells per second. Per token, because a cell of a long conversation costs many of a
    short instruction: a cell rate measured on the first cells misjudges the rest.

    Both rates are exponential moving averages in time (`time_constant` seconds), each report
    weighted by the time it covers, so a burst of small reports cannot swing them.
    """

    def __init__(self, cells: int, tokens: int | None = None, *, time_constant: float = 20.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cells, self.tokens = cells, tokens or 0
        self.cells_done = self.tokens_done = 0
        self.cells_per_second: float | None = None
        self.tokens_per_second: float | None = None
        self.per_token = bool(tokens)
        self._tau, self._clock = time_constant, clock
        self._last = clock()

    def restart(self) -> None:
        """Start the clock now, if nothing was computed yet: a model load is no scoring time."""
        if not self.cells_done:
            self._last = self._clock()

    def computed(self, cells: int, tokens: int | None = None) -> None:
        """`cells` more cells, of `tokens` prompt tokens (None: not known), were computed."""
        now = self._clock()
        dt, self._last = max(now - self._last, 1e-6), now
        weight = 1.0 - math.exp(-dt / self._tau)
        self.cells_per_second = _smoothed(self.cells_per_second, cells / dt, weight)
        if tokens is None:
            self.per_token = False
        elif self.per_token:
            self.tokens_per_second = _smoothed(self.tokens_per_second, tokens / dt, weight)
            self.tokens_done = min(self.tokens_done + tokens, self.tokens)
        # a batch split after a failure is computed again: the counts stop at the totals
        self.cells_done = min(self.cells_done + cells, self.cells)

    def seconds(self) -> float | None:
        """Seconds left at the smoothed rate; None before a rate is known."""
        if self.per_token and self.tokens_per_second:
            return (self.tokens - self.tokens_done) / self.tokens_per_second
        if self.cells_per_second:
            return (self.cells - self.cells_done) / self.cells_per_second
        return None


def _smoothed(rate: float | None, instant: float, weight: float) -> float:
    return instant if rate is None else rate + weight * (instant - rate)
