"""Where a command's time goes: named phases added up for the whole process (`selectit score -v`).

The phases are recorded wherever the work happens (the CLI, the runner, the model loader) with
`with phase("scoring"): ...`; `breakdown(total)` turns them into lines, the time not covered by
any phase shown as `other`. Nested phases are named `outer: inner` and listed under their outer
phase; only top-level phases add up to the total.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
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
