"""What `selectit score` (in process) reports while it runs: the `ScoreProgress` protocol the
runner calls, `CellTokens` (an engine's count of cells finished, with their tokens), and
`TqdmProgress`, the bar `Store.score(progress=True)` draws from it; both bars show the time left
of `selectit.timing.TimeLeft`.

The time left is per token, not per cell: a cell of a 2,000-token conversation costs about ten of
a 200-token instruction, so a cell rate measured on short cells is far too fast for long ones.
Tokens here are the planner's (≈4 characters each; a conversation scored in one pass counts its
transcript once): the measure of the jobs' `est_tokens`, of `score --estimate` and of `selectit
status`'s ETA.
"""

from __future__ import annotations

import bisect
import inspect
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

from selectit.timing import TimeLeft


class ScoreProgress(Protocol):
    """What `score_in_process` reports while it runs (the CLI draws a progress bar from it).

    `tokens` is None where they are not known; a bar then times the rest by its cell rate. An
    older implementation whose `start`/`computed` take the cells only is still called (without
    the tokens: `with_tokens`).
    """

    def start(self, total: int, tokens: int | None = None) -> None:
        """`total` cells are missing in the scope, of `tokens` prompt tokens (the planner's)."""

    def advance(self, cells: int) -> None:
        """`cells` more cells were written (ok or failed)."""

    def computed(self, cells: int, tokens: int | None = None) -> None:
        """`cells` more cells, of `tokens` prompt tokens, were computed by the engine (written
        with their batch later)."""

    def note(self, text: str) -> None:
        """Something worth a line: waiting for other workers, a failed job."""

    def loading(self, text: str | None) -> None:
        """A model is loading (`text`: "loading model NAME…"); None: the load has ended."""


def with_tokens(method: Callable[..., None]) -> Callable[[int, int | None], None]:
    """`method(cells, tokens)`, or `method(cells)` for a progress written before the tokens."""
    try:
        inspect.signature(method).bind(0, 0)
    except TypeError:
        return lambda cells, tokens: method(cells)
    except ValueError:  # no signature to read (a builtin): assume the current protocol
        pass
    return method


class CellTokens:
    """An engine's `progress(n)` (cells finished) as `report(n, tokens)`.

    An engine says how many cells it finished, not which: they are taken in request order, a
    request's tokens spread evenly over its cells, so the reports of a batch add up to its tokens.
    `requests` gives (cells, tokens) per request; tokens None: not known (reported as None).
    """

    def __init__(self, requests: Sequence[tuple[int, int | None]],
                 report: Callable[[int, int | None], None]) -> None:
        self._report = report
        self._known = all(t is not None for _, t in requests)
        self._cells = list(_running_sum(c for c, _ in requests))
        self._tokens = list(_running_sum(t or 0 for _, t in requests))
        self._done = self._sent = 0

    def __call__(self, cells: int) -> None:
        if not self._known:
            self._report(cells, None)
            return
        self._done += cells
        tokens = self._tokens_through(self._done)
        self._report(cells, tokens - self._sent)
        self._sent = tokens

    def _tokens_through(self, done: int) -> int:
        """The tokens of the first `done` cells (all of them past the last)."""
        i = bisect.bisect_left(self._cells, done, lo=1)  # the request holding cell number `done`
        if i >= len(self._cells):
            return self._tokens[-1]
        below, cells = self._cells[i - 1], max(self._cells[i] - self._cells[i - 1], 1)
        return self._tokens[i - 1] + (self._tokens[i] - self._tokens[i - 1]) * (done - below) // cells


def _running_sum(values: Iterable[int]) -> Iterator[int]:
    """0, then the sum of the values so far after each."""
    total = 0
    yield 0
    for v in values:
        total += v
        yield total


class TqdmProgress:
    """`Store.score(progress=True)`: a tqdm.auto bar (a widget in notebooks, text in terminals);
    its time left is `TimeLeft`'s ("03:20 left"), not tqdm's cells ÷ cells/s."""

    #: tqdm's own layout with its cells/s, less its time remaining (the postfix says ours).
    FORMAT = "{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}, {rate_fmt}{postfix}]"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._bar: Any = None
        self._left: TimeLeft | None = None
        self._clock = clock

    def start(self, total: int, tokens: int | None = None) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, unit="cell", desc="scoring", smoothing=0.1, bar_format=self.FORMAT)
        self._left = TimeLeft(total, tokens, clock=self._clock)

    def computed(self, cells: int, tokens: int | None = None) -> None:
        if self._bar is None or self._left is None:
            return
        from tqdm import tqdm

        self._left.computed(cells, tokens)
        seconds = self._left.seconds()
        self._bar.set_postfix_str("" if seconds is None else f"{tqdm.format_interval(seconds)} left", refresh=False)
        self._bar.update(min(cells, (self._bar.total or 0) - self._bar.n))
        if self._bar.n >= (self._bar.total or 0):
            self._bar.close()

    def advance(self, cells: int) -> None:
        """Cells written: the bar shows them computed already."""

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text)

    def loading(self, text: str | None) -> None:
        if self._bar is not None:
            self._bar.set_description(text or "scoring")
        if text is None and self._left is not None:
            self._left.restart()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
