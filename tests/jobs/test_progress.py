"""The progress bars of `selectit score` (rich) and `Store.score(progress=True)` (tqdm): their time
left is the tokens left at the smoothed tokens per second (`selectit.timing.TimeLeft`), not the
cells left at cells per second; and an engine's count of finished cells becomes their tokens
(`CellTokens`). No database, no model: the bars are fed by hand on a clock the test moves.
"""

from __future__ import annotations

import pytest

from selectit.cli.scoring import _ScoringBar
from selectit.jobs.progress import CellTokens, TqdmProgress, with_tokens
from selectit.timing import TimeLeft

#: A run whose first cells are short and the rest long: 4 cells of 100 tokens, then 6 of 2,000.
#: The engine's token rate is steady (100 tokens/s: a short cell takes 1 s, a long one 20 s); its
#: cell rate is not (1 cell/s on the short ones, 0.05 on the long ones).
SHORT, LONG, N_SHORT, N_LONG, TOKENS_PER_SECOND = 100, 2000, 4, 6, 100.0
CELLS, TOKENS = N_SHORT + N_LONG, N_SHORT * SHORT + N_LONG * LONG  # 10 cells, 12,400 tokens


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def feed_short_cells(bar: object, clock: Clock, *, tokens: bool = True) -> None:
    """The 4 short cells, one report each, a second apart."""
    for _ in range(N_SHORT):
        clock.now += SHORT / TOKENS_PER_SECOND
        bar.computed(1, SHORT if tokens else None)  # type: ignore[attr-defined]


def test_the_time_left_follows_the_tokens_not_the_cells() -> None:
    clock = Clock()
    left = TimeLeft(CELLS, TOKENS, clock=clock)
    feed_short_cells(left, clock)
    # tokens left ÷ tokens/s = (12,400 − 400) / 100 = 120 s; the cell rate would say 6 / 1 = 6 s
    assert left.tokens_per_second == pytest.approx(100.0) and left.cells_per_second == pytest.approx(1.0)
    assert left.seconds() == pytest.approx(120.0)
    clock.now += LONG / TOKENS_PER_SECOND  # one long cell: 20 s
    left.computed(1, LONG)
    # (12,400 − 2,400) / 100 = 100 s: the steady token rate is unmoved by the slower cells
    assert left.seconds() == pytest.approx(100.0)


def test_without_tokens_the_time_left_is_the_cells_at_their_rate() -> None:
    clock = Clock()
    unknown = TimeLeft(CELLS, None, clock=clock)
    feed_short_cells(unknown, clock, tokens=False)
    assert unknown.seconds() == pytest.approx(6.0)  # 6 cells left at 1 cell/s
    # a total known at the start, but a report without tokens: the cell rate from then on
    clock2 = Clock()
    mixed = TimeLeft(CELLS, TOKENS, clock=clock2)
    feed_short_cells(mixed, clock2)
    clock2.now += 1.0
    mixed.computed(1, None)
    assert not mixed.per_token and mixed.seconds() == pytest.approx(5.0)  # 5 cells at 1 cell/s


def test_the_clock_starts_when_the_model_has_loaded() -> None:
    clock = Clock()
    left = TimeLeft(CELLS, TOKENS, clock=clock)
    clock.now += 300.0  # the model loads for 5 minutes
    left.restart()
    feed_short_cells(left, clock)
    assert left.seconds() == pytest.approx(120.0)  # as if there had been no load


def test_the_score_bar_shows_the_time_left_by_tokens_and_counts_it_down() -> None:
    clock = Clock()
    with _ScoringBar(enabled=True, clock=clock) as bar:
        bar.start(CELLS, TOKENS)
        feed_short_cells(bar, clock)
        assert bar.seconds_left() == pytest.approx(120.0)
        task = bar._bar.tasks[0]
        assert task.completed == N_SHORT and task.total == CELLS  # the bar still counts cells
        (column,) = [c for c in bar._bar.columns if type(c).__name__ == "TimeLeftColumn"]
        assert column.render(task).plain == "0:02:00"
        clock.now += 5.0  # no report for 5 s: the column counts down
        assert column.render(task).plain == "0:01:55"


def test_the_score_bar_falls_back_to_the_cell_rate_without_tokens() -> None:
    clock = Clock()
    with _ScoringBar(enabled=True, clock=clock) as bar:
        bar.start(CELLS)
        feed_short_cells(bar, clock, tokens=False)
        assert bar.seconds_left() == pytest.approx(6.0)


def test_the_tqdm_bar_says_the_time_left_by_tokens() -> None:
    clock = Clock()
    progress = TqdmProgress(clock=clock)
    progress.start(CELLS, TOKENS)
    feed_short_cells(progress, clock)
    shown = str(progress._bar)
    assert "4/10" in shown and shown.endswith("02:00 left]"), shown
    progress.close()


def test_an_engines_count_of_cells_becomes_their_tokens_in_request_order() -> None:
    heard: list[tuple[int, int | None]] = []
    # two requests: 5 cells of 100 tokens each, then 5 of 200
    count = CellTokens([(5, 500), (5, 1000)], lambda cells, tokens: heard.append((cells, tokens)))
    for n in (3, 4, 3):  # the second report ends inside the second request
        count(n)
    # 3 × 100; then 2 × 100 + 2 × 200; then 3 × 200: the batch's 1,500 tokens in all
    assert heard == [(3, 300), (4, 600), (3, 600)]
    count(2)  # computed again (a batch split after a failure): no tokens beyond the batch's
    assert heard[-1] == (2, 0)
    unknown: list[tuple[int, int | None]] = []
    CellTokens([(5, 500), (5, None)], lambda cells, tokens: unknown.append((cells, tokens)))(4)
    assert unknown == [(4, None)]


def test_a_progress_written_before_the_tokens_is_still_called() -> None:
    seen: list[int] = []

    class Old:
        def computed(self, cells: int) -> None:
            seen.append(cells)

    class New:
        def computed(self, cells: int, tokens: int | None = None) -> None:
            seen.append(cells * 1000 + (tokens or 0))

    with_tokens(Old().computed)(3, 42)
    with_tokens(New().computed)(3, 42)
    assert seen == [3, 3042]
