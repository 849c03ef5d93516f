"""What `selectit score` (in process) reports while it runs: the `ScoreProgress` protocol the
runner calls, and `TqdmProgress`, the bar `Store.score(progress=True)` draws from it."""

from __future__ import annotations

from typing import Any, Protocol


class ScoreProgress(Protocol):
    """What `score_in_process` reports while it runs (the CLI draws a progress bar from it)."""

    def start(self, total: int) -> None:
        """`total` cells are missing in the scope."""

    def advance(self, cells: int) -> None:
        """`cells` more cells were written (ok or failed)."""

    def computed(self, cells: int) -> None:
        """`cells` more cells were computed by the engine (written with their batch later)."""

    def note(self, text: str) -> None:
        """Something worth a line: waiting for other workers, a failed job."""

    def loading(self, text: str | None) -> None:
        """A model is loading (`text`: "loading model NAME…"); None: the load has ended."""


class TqdmProgress:
    """`Store.score(progress=True)`: a tqdm.auto bar (a widget in notebooks, text in terminals)."""

    def __init__(self) -> None:
        self._bar: Any = None

    def start(self, total: int) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, unit="cell", desc="scoring", smoothing=0.1)

    def computed(self, cells: int) -> None:
        if self._bar is not None:
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

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
