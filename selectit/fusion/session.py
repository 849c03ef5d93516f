"""One fusion: the recipe every ranked command runs, written once.

`Fusion(db_url, ranking)` opens the DuckDB connection with the views of one `Ranking`;
`rank(dataset)` checks that a model and a prompt set are chosen, measures the dataset's coverage
(the partial warning, or `IncompleteScoring` before anything is computed or frozen), and ranks the
dataset once into `dataset_ranking`; `chosen(criterion)` then reads that table. `rank`, `select`,
`export`, `report` and `diagnose` all go through it.

    >>> with Fusion("sqlite:///selectit.db", Ranking(alpha=0.5)) as f:  # doctest: +SKIP
    ...     ranked = f.rank("alpaca")
    ...     best = f.chosen(Criterion(top_n=10))
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from selectit.contract import DEFAULT_TOP
from selectit.fusion.coverage import Coverage, coverage
from selectit.fusion.params import Params, require_scoring_setup
from selectit.fusion.selection import Criterion, RankedSample, chosen, partial_warning, rank_dataset
from selectit.fusion.views import connect
from selectit.ranking import DEFAULT_RANKING, Ranking


@dataclass(frozen=True)
class Ranked:
    """A dataset ranked under one fusion: its parameters, how many samples are rankable, its
    coverage, and the one-line warning when only part of it is."""

    dataset: str
    params: Params
    n_rankable: int
    coverage: Coverage
    warning: str | None


class Fusion:
    """The fusion views of `ranking` over the store at `db_url` (`top`: the share in `selective_alpaca`)."""

    def __init__(self, db_url: str | None, ranking: Ranking = DEFAULT_RANKING, *, top: float = DEFAULT_TOP) -> None:
        self.ranking = ranking
        self.con: duckdb.DuckDBPyConnection = connect(db_url, ranking, top=top)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Fusion:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def params(self) -> Params:
        """The resolved choices, or a `FusionError` saying what to set up first."""
        return require_scoring_setup(self.con)

    def rank(self, dataset: str, *, require_complete: bool = False) -> Ranked:
        """Rank `dataset` once (see the module's docstring); `require_complete` refuses a partly scored one."""
        params = self.params
        cov = coverage(self.con, dataset)
        warning = partial_warning(cov, require_complete)  # before anything is computed or frozen
        return Ranked(dataset, params, rank_dataset(self.con, dataset), cov, warning)

    def near_duplicates(self, dataset: str | None = None) -> int:
        """Fill the `near_duplicates` view's groups for `dataset` (None: every dataset); how many groups."""
        from selectit.fusion.dedup import near_groups

        rows = self.con.execute("SELECT id, name FROM store.datasets ORDER BY id").fetchall()
        return sum(near_groups(self.con, int(i), name, self.ranking.jaccard)
                   for i, name in rows if dataset is None or name == dataset)

    def chosen(self, criterion: Criterion = Criterion(), limit: int | None = None) -> list[RankedSample]:
        """The ranked samples `criterion` keeps, best first (after `rank`)."""
        return chosen(self.con, criterion, limit)
