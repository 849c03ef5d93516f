"""The Python API: the library under the CLI, for notebooks and scripts.

    >>> import selectit
    >>> store = selectit.open("sqlite:///selectit.db")          # doctest: +SKIP
    >>> store.ingest("alpaca.json", dataset="alpaca")            # doctest: +SKIP
    >>> store.rank("alpaca", alpha=0.2).to_pandas().head()       # doctest: +SKIP

`open(url)` gives a `Store` on a curation database (created on first use; an older schema is
refused with the command that upgrades it). Tables come back as `pyarrow.Table`
(``.to_pandas()`` where pandas is installed). Nothing here imports torch until `score()` runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectit import db
from selectit.contract import DEFAULT_TOP

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    from sqlalchemy.engine import Engine

    from selectit.export import ExportResult
    from selectit.ingest import IngestResult


@dataclass(frozen=True)
class SelectionInfo:
    """A frozen selection, as `Store.select` made it."""

    name: str
    id: int
    dataset: str
    n_selected: int
    n_rankable: int


class Store:
    """A curation database: ingest, score, rank, select, export and query it.

    Modelled on sqlite-utils' `Database`: one object per database, methods named after the CLI
    commands, plain values in and tables out.
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = url
        self.engine: Engine = db.open_store(url)

    # -- context manager --------------------------------------------------------------------
    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<selectit.Store {self.engine.url.render_as_string(hide_password=True)}>"

    # -- data in ----------------------------------------------------------------------------
    def ingest(self, path: str | os.PathLike[str], dataset: str, *, format: str | None = None,
               map: dict[str, str] | str | None = None, split: str | None = None,
               skip_invalid: bool = False, limit: int | None = None, progress: Any = None) -> IngestResult:
        """Add the records of `path` (a file, a ``save_to_disk`` directory, or an ``owner/name`` Hugging
        Face Hub dataset read offline from the local cache) to `dataset`.

        `map` names the file's columns for selectit's fields, e.g.
        ``{"instruction": "question", "output": "response"}`` or the CLI's
        ``"instruction=question,output=response"``.
        """
        from selectit.ingest import ingest_file

        return ingest_file(self.engine, path, dataset, fmt=format, skip_invalid=skip_invalid, limit=limit,
                           column_map=map, split=split, progress=progress)

    def datasets(self) -> pa.Table:
        """name, samples, created, source of every dataset."""
        import pyarrow as pa

        from selectit.ingest import dataset_rows

        rows = dataset_rows(self.engine)
        return pa.table({"name": [r[0] for r in rows], "samples": [r[1] for r in rows],
                         "created": [r[2] for r in rows], "source": [r[3] for r in rows]})

    # -- scoring ----------------------------------------------------------------------------
    def add_model(self, name: str, source: str, *, dtype: str | None = None, weight: float | None = None,
                  max_tokens: int | None = None) -> int:
        """Register model `name` from `source` (hub id, directory, .gguf or an alias); its version id."""
        from selectit import registry

        with db.session_scope(self.engine) as session:
            return registry.add_model(session, name, source, dtype=dtype, weight=weight, max_tokens=max_tokens).id

    def score(self, *, dataset: str | None = None, model: str | None = None, prompt_set: str | None = None,
              progress: Any = None) -> Any:
        """Score the missing cells in this process (loads torch); a `ScoreSummary` of what was done.

        `progress`: an object with ``start(total)`` and ``advance(n)`` (the CLI passes its bar).
        """
        from selectit.runner import score_in_process

        return score_in_process(self.engine, dataset=dataset, model=model, prompt_set=prompt_set, progress=progress)

    # -- fusion -----------------------------------------------------------------------------
    @contextmanager
    def _fusion(self, *, alpha: float, formula: str, models: Sequence[str] | None, prompt_set: str | None,
                weights: dict[str, float] | None, top: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        from selectit import fusion

        con = fusion.connect(self.url, alpha=alpha, formula=formula, models=list(models) if models else None,
                             prompt_set=prompt_set, weights=weights, top=top or DEFAULT_TOP)
        try:
            yield con
        finally:
            con.close()

    def rank(self, dataset: str, *, alpha: float = 0.2, formula: str = "paper", weights: dict[str, float] | None = None,
             models: Sequence[str] | None = None, prompt_set: str | None = None, top: float | None = None,
             top_n: int | None = None, min_score: float | None = None) -> pa.Table:
        """The dataset's ranking, best first: rank, sample_id, position, s_model, instruction, input, output.

        Recomputed from the stored ratings for any α, formula, models or weights. `top`/`top_n`/
        `min_score` keep only part of it (default: every rankable sample).
        """
        from selectit.selection import Criterion, rank_dataset

        criterion = Criterion(top=top, top_n=top_n, min_score=min_score)
        with self._fusion(alpha=alpha, formula=formula, models=models, prompt_set=prompt_set, weights=weights) as con:
            rank_dataset(con, dataset)
            return con.execute(
                "SELECT r.rank, r.sample_id, r.position, r.s_model, s.instruction, s.input, s.output "
                f"FROM (SELECT * FROM dataset_ranking WHERE {criterion.where()}) r "
                "JOIN store.samples s ON s.id = r.sample_id ORDER BY r.rank"
            ).to_arrow_table()

    def select(self, name: str, dataset: str, *, top: float | None = None, top_n: int | None = None,
               min_score: float | None = None, alpha: float = 0.2, formula: str = "paper",
               weights: dict[str, float] | None = None, models: Sequence[str] | None = None,
               prompt_set: str | None = None) -> SelectionInfo:
        """Freeze the current top of `dataset`'s ranking as the selection `name` (default: top 20%)."""
        from selectit.selection import Criterion, freeze_selection

        if top is None and top_n is None and min_score is None:
            top = DEFAULT_TOP
        criterion = Criterion(top=top, top_n=top_n, min_score=min_score)
        with self._fusion(alpha=alpha, formula=formula, models=models, prompt_set=prompt_set, weights=weights) as con:
            selection_id, n, n_rankable = freeze_selection(self.engine, con, name, dataset, criterion)
        return SelectionInfo(name, selection_id, dataset, n, n_rankable)

    def export(self, out: str | os.PathLike[str], *, selection: str | None = None, dataset: str | None = None,
               format: str | None = None, order: str = "rank", with_scores: bool = False,
               llamafactory: bool | str | None = False,
               card: bool = True, top: float | None = None, top_n: int | None = None,
               min_score: float | None = None, alpha: float = 0.2, formula: str = "paper",
               weights: dict[str, float] | None = None, models: Sequence[str] | None = None,
               prompt_set: str | None = None) -> ExportResult:
        """Write a frozen `selection` (or the current top of `dataset`) to `out`.

        `format` defaults to ``original`` (the records as ingested, in the input's format) when
        every selected record kept its original, else ``alpaca-json``.
        """
        from selectit.export import export_selection

        return export_selection(self.engine, self.url, out, selection=selection, dataset=dataset, fmt=format,
                                order=order,
                                with_scores=with_scores, llamafactory=llamafactory, card=card, top=top,
                                top_n=top_n, min_score=min_score, alpha=alpha, formula=formula,
                                weights=weights, models=list(models) if models else None,
                                prompt_set=prompt_set)

    def sql(self, query: str, *, alpha: float = 0.2, formula: str = "paper", weights: dict[str, float] | None = None,
            models: Sequence[str] | None = None, prompt_set: str | None = None, top: float | None = None) -> pa.Table:
        """Read-only SQL (DuckDB) over the fusion views and the curation tables (``store.<table>``)."""
        import pyarrow as pa

        from selectit import fusion

        with self._fusion(alpha=alpha, formula=formula, models=models, prompt_set=prompt_set, weights=weights,
                          top=top) as con:
            columns, rows = fusion.run_sql(con, query)
        # By position: a query may name two columns alike (SELECT 1 AS a, 2 AS a).
        return pa.Table.from_arrays([_arrow_column([r[i] for r in rows]) for i in range(len(columns))],
                                    names=columns)


def _arrow_column(values: list[Any]) -> pa.Array:
    """An Arrow array of one result column; integers beyond 64 bits (DuckDB's HUGEINT) as decimals."""
    import decimal

    import pyarrow as pa

    try:
        return pa.array(values)
    except (OverflowError, pa.ArrowInvalid):
        if all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in values):
            return pa.array([None if v is None else decimal.Decimal(v) for v in values], type=pa.decimal256(76, 0))
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


def open(url: str | Path | None = None) -> Store:  # noqa: A001 - selectit.open mirrors sqlite_utils.Database
    """A `Store` on the database at `url`: a SQLAlchemy URL or a path to a SQLite file
    (default $SELECTIT_DATABASE_URL, else ./selectit.db)."""
    if url is not None and "://" not in str(url):
        url = f"sqlite:///{Path(url)}"
    return Store(None if url is None else str(url))
