"""Coverage: which cells are done, failed or missing, and which samples can be ranked.

A cell is *done* iff its stored status is `ok`, *failed* iff it is `failed`, and *missing*
otherwise (never scored). A sample's cells are those of each of its rated turns (`samples.n_turns`;
turn 0, its last, alone where only the last turn counts). A sample is complete when all its cells
are done, failed when at least one cell failed, else missing. `cell_coverage` is the one computation, used by `rank`, `select`,
`report` and `status`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import duckdb

from selectit.contract import RENDERING, CellStatus
from selectit.fusion.params import params_of
from selectit.fusion.store_attach import attach, dataset_id, sql_str


@dataclass(frozen=True)
class ModelCoverage:
    """Cells and samples of one model version over the active prompts of one prompt set.

    A cell is done iff its status is `ok`, failed iff `failed`, missing otherwise; a sample is
    complete when all its cells are done, failed when one failed, else missing.
    """

    model: str
    model_id: int
    prompt_set: str
    n_samples: int
    n_prompts: int
    ok: int  # cells done
    failed: int  # cells failed
    samples_complete: int
    samples_failed: int
    n_turns: int = 0  # rated turns of the samples (Σ n_turns; n_samples when only the last counts)
    ok_last: int = 0  # of `ok`, cells of the last turns (turn 0)
    failed_last: int = 0  # of `failed`, cells of the last turns

    @property
    def missing(self) -> int:
        """Cells never scored."""
        return max(self.n_turns, self.n_samples) * self.n_prompts - self.ok - self.failed

    @property
    def missing_earlier(self) -> int:
        """Of `missing`, the cells of turns before the last (what `score --turns last` leaves)."""
        return self.missing - (self.n_samples * self.n_prompts - self.ok_last - self.failed_last)

    @property
    def samples_missing(self) -> int:
        """Samples with a cell never scored and none failed."""
        return self.n_samples - self.samples_complete - self.samples_failed


@dataclass(frozen=True)
class Coverage:
    """How much of a dataset can be ranked with the chosen models and prompts, and why not."""

    dataset: str
    n_samples: int
    n_rankable: int
    n_cells_per_sample: int
    samples_with_failed: int  # not rankable: at least one failed cell
    samples_with_missing: int  # not rankable: some cell never scored (and none failed)
    models: tuple[ModelCoverage, ...] = field(default_factory=tuple)
    #: ok cells scored in top-k mode with a label outside the server's top K (counted as 0)
    cells_partial: int = 0
    #: the ranking's turns aggregate, and (under mean / min) how many samples would rank under
    #: ``last``: those whose last turn is scored while an earlier turn is not
    turns_agg: str = "last"
    n_rankable_last: int | None = None

    @property
    def n_not_rankable(self) -> int:
        return self.n_samples - self.n_rankable


def cell_coverage(
    con: duckdb.DuckDBPyConnection,
    dataset: int | None,
    models: Sequence[tuple[int, str]],
    prompts: Sequence[tuple[int, str]],
    every_turn: bool = True,
) -> tuple[int, list[ModelCoverage]]:
    """The one coverage computation: (samples in scope, per model × prompt set counts).

    `dataset`: a dataset id, or None for the samples of every dataset. `models`: (id, name) of
    model versions; `prompts`: (id, set name) of prompt versions; `every_turn`: the cells of every
    rated turn, else of the last turns alone. Leaves the temp table `coverage_cells` (sample_id,
    model_id, set_name, n_ok, n_failed, n_partial, n_turns) for per-sample questions.
    """
    scope = (f"SELECT sample_id FROM store.dataset_samples WHERE dataset_id = {int(dataset)}" if dataset is not None
             else "SELECT DISTINCT sample_id FROM store.dataset_samples")
    turns = "s.n_turns" if every_turn else "1"
    n_samples, n_turns = (int(x or 0) for x in con.execute(
        f"SELECT count(*), sum({turns}) FROM store.samples s WHERE s.id IN ({scope})").fetchone())
    model_rows = ", ".join(f"({int(i)})" for i, _ in models) or "(NULL)"
    prompt_rows = ", ".join(f"({int(i)}, {sql_str(name)})" for i, name in prompts) or "(NULL, NULL)"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE coverage_cells AS
        SELECT s.sample_id, s.model_id, p.set_name,
               count(*) FILTER (WHERE s.status = '{CellStatus.OK}') AS n_ok,
               count(*) FILTER (WHERE s.status = '{CellStatus.FAILED}') AS n_failed,
               count(*) FILTER (WHERE s.status = '{CellStatus.OK}'
                                AND COALESCE(CAST(s.partial AS INTEGER), 0) = 1) AS n_partial,
               count(*) FILTER (WHERE s.status = '{CellStatus.OK}' AND s.turn = 0) AS n_ok_last,
               count(*) FILTER (WHERE s.status = '{CellStatus.FAILED}' AND s.turn = 0) AS n_failed_last,
               any_value({turns.replace("s.", "x.")}) AS n_turns
        FROM store.scores s
        JOIN store.samples x ON x.id = s.sample_id
        JOIN (VALUES {model_rows}) m(model_id) ON m.model_id = s.model_id
        JOIN (VALUES {prompt_rows}) p(prompt_id, set_name) ON p.prompt_id = s.prompt_id
        WHERE s.rendering = {RENDERING} AND s.sample_id IN ({scope}){"" if every_turn else " AND s.turn = 0"}
        GROUP BY s.sample_id, s.model_id, p.set_name
        """
    )
    k_of: dict[str, int] = {}
    for _, name in prompts:
        k_of[name] = k_of.get(name, 0) + 1
    counts = {
        (int(m), str(name)): tuple(int(x or 0) for x in rest)
        for m, name, *rest in con.execute(
            "SELECT c.model_id, c.set_name, sum(n_ok), sum(n_failed), count(*) FILTER (WHERE n_ok = k.k * n_turns), "
            "count(*) FILTER (WHERE n_failed > 0), sum(n_ok_last), sum(n_failed_last) FROM coverage_cells c "
            f"JOIN (VALUES {', '.join(f'({sql_str(n)}, {k})' for n, k in k_of.items()) or '(NULL, 0)'}) "
            "k(set_name, k) ON k.set_name = c.set_name GROUP BY c.model_id, c.set_name"
        ).fetchall()
    }
    rows = [
        ModelCoverage(name, int(model_id), set_name, n_samples, k, *counts.get((int(model_id), set_name), (0,) * 4)[:4],
                      n_turns=n_turns, ok_last=counts.get((int(model_id), set_name), (0,) * 6)[4],
                      failed_last=counts.get((int(model_id), set_name), (0,) * 6)[5])
        for model_id, name in models
        for set_name, k in k_of.items()
    ]
    return n_samples, rows


def coverage(con: duckdb.DuckDBPyConnection, dataset: str) -> Coverage:
    """Cells done / missing / failed per chosen model, and rankable samples, for one dataset."""
    params = params_of(con)
    ds = dataset_id(con, dataset)
    every_turn = params.every_turn  # mean / min: every rated turn must be scored; last: turn 0
    n_samples, models = cell_coverage(con, ds, [(m.model_id, m.name) for m in params.models],
                                       [(p.prompt_id, p.set_name) for p in params.prompts], every_turn)
    expected = len(params.prompts) * len(params.models)
    complete, with_failed, partial = con.execute(
        f"SELECT count(*) FILTER (WHERE ok = {int(expected)} * n_turns), count(*) FILTER (WHERE failed > 0), "
        "COALESCE(sum(partial), 0) FROM (SELECT sample_id, sum(n_ok) AS ok, sum(n_failed) AS failed, "
        "sum(n_partial) AS partial, any_value(n_turns) AS n_turns FROM coverage_cells GROUP BY sample_id)"
    ).fetchone()
    n_rankable = int(complete) if expected else 0
    rankable_last = None
    if every_turn and expected and n_rankable < n_samples:
        prompts = ", ".join(str(int(p.prompt_id)) for p in params.prompts)
        models_in = ", ".join(str(int(m.model_id)) for m in params.models)
        rankable_last = int(con.execute(
            f"SELECT count(*) FROM (SELECT sample_id FROM store.scores WHERE turn = 0 AND rendering = {RENDERING} "
            f"AND status = '{CellStatus.OK}' "
            f"AND prompt_id IN ({prompts}) AND model_id IN ({models_in}) AND sample_id IN "
            f"(SELECT sample_id FROM store.dataset_samples WHERE dataset_id = {int(ds)}) "
            f"GROUP BY sample_id HAVING count(*) = {int(expected)})").fetchone()[0]) - n_rankable
    # A sample can only be ranked with all cells ok; the ranking may still drop one whose stored
    # probabilities sum to 0 (cannot be normalised) — those count as rankable-in-coverage only.
    return Coverage(
        dataset=dataset,
        n_samples=n_samples,
        n_rankable=n_rankable,
        n_cells_per_sample=expected,
        samples_with_failed=int(with_failed),
        samples_with_missing=n_samples - n_rankable - int(with_failed),
        models=tuple(models),
        cells_partial=int(partial),
        turns_agg=params.ranking.turns_agg,
        n_rankable_last=rankable_last,
    )


def scoring_coverage(con: duckdb.DuckDBPyConnection, dataset: str | None = None) -> list[ModelCoverage]:
    """Per active model version × active prompt set, over the samples of `dataset` (default: of
    every dataset; an unknown name is `NoSuchDataset`).

    `con` is any connection with the store attached (`attach` or `connect`); `selectit status`
    shows these rows, with the same rule as `coverage`.
    """
    ds = dataset_id(con, dataset) if dataset is not None else None
    models = con.execute(
        "SELECT id, name FROM store.models WHERE CAST(active AS INTEGER) = 1 ORDER BY name, id"
    ).fetchall()
    prompts = con.execute(
        "SELECT id, set_name FROM store.prompts WHERE CAST(active AS INTEGER) = 1 ORDER BY set_name, position, id"
    ).fetchall()
    return cell_coverage(con, ds, models, prompts)[1]


def store_coverage(db_url: str | None, dataset: str | None = None) -> list[ModelCoverage]:
    """`scoring_coverage` of the database at `db_url`, on a connection of its own."""
    con = attach(db_url)
    try:
        return scoring_coverage(con, dataset)
    finally:
        con.close()
