"""The selection half: which ranked samples to keep, frozen selections, and exports.

A `Criterion` picks part of a dataset's ranking (the fusion views of `selectit.fusion`): a top
share (rounded down, but at least one sample when anything is rankable), the top n, or a score
threshold. `freeze_selection` copies the choice into the curation database so that
`selectit.io.export` writes the same records later, whatever is scored meanwhile. A `Control` (a
random draw, or the longest responses) is frozen the same way, for honest ablations.
"""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass
from typing import Any

import duckdb
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from selectit.contract import DEFAULT_TOP, valid_name
from selectit.fusion.dedup import provenance, trimmed_sql
from selectit.fusion.errors import FusionError
from selectit.fusion.formula_sql import top_share_sql, validate_top
from selectit.fusion.params import params_of, require_scoring_setup
from selectit.fusion.store_attach import dataset_id
from selectit.store import db
from selectit.store.schema import Dataset, Selection, SelectionSample


# --------------------------------------------------------------------------------------------
# Choosing from the ranking
# --------------------------------------------------------------------------------------------
def _whole(value: object) -> bool:
    """An integer, not a bool (numpy's too): the API's arguments are not parsed by click."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _count(value: object) -> bool:
    return _whole(value) and value >= 1  # type: ignore[operator]


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class Criterion:
    """Which ranked samples to keep: a top share, the top n, or a score threshold (else all).

    The top share keeps floor(share × rankable) samples, at least one when any is rankable.
    """

    top: float | None = None
    top_n: int | None = None
    min_score: float | None = None

    def __post_init__(self) -> None:
        given = [x for x in (self.top, self.top_n, self.min_score) if x is not None]
        if len(given) > 1:
            raise FusionError("give only one of --top, --top-n and --min-score")
        if self.top is not None:
            validate_top(self.top)
        if self.top_n is not None and not _count(self.top_n):
            raise FusionError(f"--top-n must be a positive count; got {self.top_n!r}")
        if self.min_score is not None and not (_real(self.min_score) and math.isfinite(self.min_score)):
            raise FusionError(f"--min-score must be a finite number, e.g. 0.5; got {self.min_score!r}")

    @classmethod
    def or_default(cls, top: float | None = None, top_n: int | None = None,
                   min_score: float | None = None) -> Criterion:
        """The criterion given, or the default top share (`DEFAULT_TOP`) when none is.

        >>> Criterion.or_default().top
        0.2
        """
        if top is None and top_n is None and min_score is None:
            top = DEFAULT_TOP
        return cls(top=top, top_n=top_n, min_score=min_score)

    def where(self) -> str:
        if self.top is not None:
            return f"rank <= {top_share_sql(self.top)}"
        if self.top_n is not None:
            return f"rank <= {int(self.top_n)}"
        if self.min_score is not None:
            return f"s_model >= {float(self.min_score)!r}"
        return "TRUE"

    def describe(self) -> str:
        if self.top is not None:
            return f"top {self.top:.4g} share"
        if self.top_n is not None:
            return f"top {self.top_n}"
        if self.min_score is not None:
            return f"S_model >= {self.min_score:.6g}"
        return "all rankable"

    def as_json(self) -> dict[str, Any]:
        return {"top": self.top, "top_n": self.top_n, "min_score": self.min_score}


@dataclass(frozen=True)
class RankedSample:
    rank: int
    sample_id: int
    position: int
    s_model: float


def rank_dataset(con: duckdb.DuckDBPyConnection, dataset: str) -> int:
    """Compute the dataset's ranking once into the temp table `dataset_ranking`; its size.

    One pass over the attached scores; `chosen()` and `count_chosen()` then read the table.
    """
    params = require_scoring_setup(con)
    ds = dataset_id(con, dataset)
    n_rankable = int(con.execute(f"SELECT count(*) FROM ranking WHERE dataset_id = {int(ds)}").fetchone()[0])
    # Dedup and per-group caps take samples out and renumber the ranks; a top share stays a share
    # of every rankable sample (docs/dedup.md).
    source = (trimmed_sql(con, ds, dataset) if params.ranking.trims
              else f"SELECT rank, sample_id, position, s_model FROM ranking WHERE dataset_id = {int(ds)}")
    con.execute(
        "CREATE OR REPLACE TEMP TABLE dataset_ranking AS "
        f"SELECT rank, sample_id, position, s_model, {n_rankable} AS n_rankable FROM ({source}) ORDER BY rank"
    )
    return n_rankable


def chosen(
    con: duckdb.DuckDBPyConnection, criterion: Criterion = Criterion(), limit: int | None = None
) -> list[RankedSample]:
    """The ranked samples kept by `criterion`, best first (after `rank_dataset`)."""
    sql = f"SELECT rank, sample_id, position, s_model FROM dataset_ranking WHERE {criterion.where()} ORDER BY rank"
    if limit is not None:
        sql += f" LIMIT {min(int(limit), 2**63 - 1)}"  # beyond BIGINT: every row
    return [RankedSample(*r) for r in con.execute(sql).fetchall()]


def chosen_with_texts(con: duckdb.DuckDBPyConnection, criterion: Criterion = Criterion(), limit: int | None = None,
                      columns: tuple[str, ...] = ("instruction", "input", "output")) -> Any:
    """`chosen()` as a `pyarrow.Table` with the samples' texts joined in (after `rank_dataset`)."""
    texts = "".join(f", s.{c}" for c in columns)
    sql = (f"SELECT r.rank, r.sample_id, r.position, r.s_model{texts} "
           f"FROM (SELECT * FROM dataset_ranking WHERE {criterion.where()}) r "
           "JOIN store.samples s ON s.id = r.sample_id ORDER BY r.rank")
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return con.execute(sql).to_arrow_table()


def count_chosen(con: duckdb.DuckDBPyConnection, criterion: Criterion = Criterion()) -> int:
    return int(con.execute(f"SELECT count(*) FROM dataset_ranking WHERE {criterion.where()}").fetchone()[0])



# --------------------------------------------------------------------------------------------
# Control selections: the same pool and size as a SelectIT selection, drawn another way
# --------------------------------------------------------------------------------------------
CONTROLS = ("random", "length")


@dataclass(frozen=True)
class Control:
    """A control for an honest ablation: fine-tune on the SelectIT selection and on a control of
    the same size from the same pool (the dataset's rankable samples), and compare.

    `random`: a uniform draw of `top` share, ordered by sha256("<seed>:<content hash>") — the same
    ids on every store that holds the same samples (no database random()). `length`: the longest
    responses (characters of the output; ties → the earlier dataset position), `top` share or
    `top_n`. A share keeps floor(share × rankable), at least one, as `--top` does.
    """

    by: str
    top: float | None = None
    top_n: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.by not in CONTROLS:
            raise FusionError(f"unknown control {self.by!r}; choose one of: {', '.join(CONTROLS)}")
        if (self.top is None) == (self.top_n is None):
            raise FusionError("give the control's size: a share (--random SHARE, or --top with --by length) or --top-n")
        if self.top is not None:  # the message names the option the user gave
            validate_top(self.top, "--random" if self.by == "random" else "--top")
        if self.top_n is not None and not _count(self.top_n):
            raise FusionError(f"--top-n must be a positive count; got {self.top_n!r}")
        if self.by == "random" and self.top is None:
            raise FusionError("--random takes a share, e.g. --random 0.2")
        if not _whole(self.seed):  # random_key's int("x") would raise a bare ValueError
            raise FusionError(f"--seed must be a whole number, e.g. --seed 1; got {self.seed!r}")

    def size(self, n_rankable: int) -> int:
        if n_rankable == 0:
            return 0
        if self.top_n is not None:
            return min(self.top_n, n_rankable)
        return max(1, math.floor(self.top * n_rankable + 1e-9))

    def describe(self) -> str:
        size = f"{self.top:.4g} share" if self.top is not None else f"{self.top_n}"
        return f"random {size}, seed {self.seed}" if self.by == "random" else f"longest responses, {size}"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"control": self.by, "top": self.top, "top_n": self.top_n}
        if self.by == "random":
            out |= {"seed": self.seed, "draw": "sha256 of '<seed>:<content_hash>', ascending"}
        else:
            out |= {"order": "response characters descending, then dataset position"}
        return out


def random_key(seed: int, content_hash: str) -> str:
    """The sort key of a random control: sha256 of "<seed>:<content hash>" (hex)."""
    return hashlib.sha256(f"{int(seed)}:{content_hash}".encode()).hexdigest()


def control_rows(con: duckdb.DuckDBPyConnection, control: Control) -> list[RankedSample]:
    """The control's samples in their drawn order, `rank` 1.. (after `rank_dataset`); each keeps
    its S_model so exports with scores show where it sits in the SelectIT ranking."""
    rows = con.execute(
        "SELECT r.sample_id, r.position, r.s_model, s.content_hash, length(s.output) FROM dataset_ranking r "
        "JOIN store.samples s ON s.id = r.sample_id"
    ).fetchall()
    if control.by == "random":
        rows.sort(key=lambda r: random_key(control.seed, r[3]))
    else:
        rows.sort(key=lambda r: (-r[4], r[1]))
    kept = rows[:control.size(len(rows))]
    return [RankedSample(i + 1, sid, position, s_model) for i, (sid, position, s_model, _, _) in enumerate(kept)]


# --------------------------------------------------------------------------------------------
# Listed selections: any query's samples, or a file of ids, frozen as given
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Listed:
    """Samples named outright: the `sample_id` column of a read-only `sql` query (over the fusion
    views and `store.*`, as `selectit sql` runs it), or `ids` read from the file `source`. They
    are frozen in the order given (rank 1..), each with its S_model; a sample named twice counts
    once. Every one must be a rankable sample of the dataset."""

    sql: str | None = None
    ids: tuple[int, ...] | None = None
    source: str | None = None  # the ids' file: name and sha256, for the params

    def __post_init__(self) -> None:
        if (self.sql is None) == (self.ids is None):
            raise FusionError("give either --sql QUERY or --ids FILE")
        if self.sql is not None and not self.sql.strip():
            raise FusionError("--sql is empty; write e.g. --sql \"SELECT sample_id FROM ranking WHERE …\"")

    def describe(self) -> str:
        return "the samples of the query" if self.sql is not None else f"the ids of {self.source or 'a list'}"

    def as_json(self) -> dict[str, Any]:
        if self.sql is not None:
            return {"sql": self.sql}
        return {"ids": {"source": self.source, "n": len(self.ids or ())}}


def listed_rows(con: duckdb.DuckDBPyConnection, listed: Listed, dataset: str) -> list[RankedSample]:
    """The listed samples in the order given, rank 1.. (after `rank_dataset`)."""
    from selectit.fusion.console import run_sql

    if listed.sql is not None:
        columns, result = run_sql(con, listed.sql)
        if "sample_id" not in columns:
            raise FusionError(f"--sql must return a sample_id column; it returned: {', '.join(columns) or 'nothing'}")
        at = columns.index("sample_id")
        try:
            ids = [int(r[at]) for r in result]
        except (TypeError, ValueError):
            raise FusionError("--sql's sample_id column must hold sample ids (whole numbers, no NULL)") from None
    else:
        ids = list(listed.ids or ())
    ids = list(dict.fromkeys(ids))
    ranked = {sid: (position, s_model) for sid, position, s_model in
              con.execute("SELECT sample_id, position, s_model FROM ranking WHERE dataset_id = "
                          f"{int(dataset_id(con, dataset))}").fetchall()}
    missing = [i for i in ids if i not in ranked]
    if missing:
        shown = ", ".join(map(str, missing[:5])) + (", …" if len(missing) > 5 else "")
        raise FusionError(f"{len(missing)} of the {len(ids)} listed samples are not rankable samples of {dataset} "
                          f"(not in it, or not fully scored): {shown}; check them with `selectit sql`")
    return [RankedSample(i + 1, sid, *ranked[sid]) for i, sid in enumerate(ids)]


def read_ids(path: str) -> tuple[tuple[int, ...], str]:
    """The sample ids of a file (one per line; blank lines and `#` comments skipped) and its name and sha256."""
    from pathlib import Path

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise FusionError(f"cannot read --ids {path}: {exc.strerror or exc}") from None
    ids = []
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if not text.isdigit():
            raise FusionError(f"--ids {path}, line {number}: {text[:40]!r} is not a sample id (one whole number a line)")
        ids.append(int(text))
    return tuple(ids), f"{Path(path).name} (sha256 {hashlib.sha256(raw).hexdigest()})"


def criterion_for(*, top: float | None = None, top_n: int | None = None, min_score: float | None = None,
                  random: float | None = None, seed: int = 0, by: str = "score", sql: str | None = None,
                  ids: Any = None) -> Criterion | Control | Listed:
    """What `selectit select` freezes, from its options (`selectit.Store.select`): the top of the
    ranking, a control, or the samples a query or a list names; contradictory options are an error."""
    import os

    if by not in ("score", "length"):
        raise FusionError(f"--by must be score or length, not {by!r}")
    if sql is not None or ids is not None:
        if (top, top_n, min_score, random, by) != (None, None, None, None, "score"):
            raise FusionError("--sql and --ids name the samples themselves: give them without --top, --top-n, "
                              "--min-score, --random or --by")
        if isinstance(ids, (str, os.PathLike)):
            listed_ids, source = read_ids(str(ids))
            return Listed(sql=sql, ids=listed_ids, source=source)
        return Listed(sql=sql, ids=None if ids is None else tuple(int(i) for i in ids))
    if random is not None:
        if by != "score" or top is not None or top_n is not None or min_score is not None:
            raise FusionError("--random SHARE is the control's size: give it without --top, --top-n, "
                              "--min-score or --by")
        return Control("random", top=random, seed=seed)
    if by == "length":
        if min_score is not None:
            raise FusionError("--by length keeps the longest responses: give --top or --top-n, not --min-score")
        return Control("length", top=DEFAULT_TOP if top is None and top_n is None else top, top_n=top_n)
    return Criterion.or_default(top=top, top_n=top_n, min_score=min_score)


# --------------------------------------------------------------------------------------------
# Frozen selections and exports
# --------------------------------------------------------------------------------------------
def _selection_by_name(session: sa.orm.Session, name: str) -> Selection | None:
    return session.scalars(sa.select(Selection).where(Selection.name == name)).one_or_none()


def freeze_selection(
    engine: Engine, con: duckdb.DuckDBPyConnection, name: str, dataset: str, criterion: Criterion | Control | Listed,
    n_rankable: int,
) -> tuple[int, int, int]:
    """Store the dataset's current choice as the selection `name`: (selection id, kept, rankable),
    after `rank_dataset` (`selectit.fusion.session.Fusion.rank`) ranked its `n_rankable` samples.

    The ranks, sample ids and scores are copied, so the selection never changes afterwards. A
    `Control` is frozen the same way; its params' criterion says how it was drawn.
    """
    name = valid_name(name, "selection")
    with db.session_scope(engine) as session:
        existing = _selection_by_name(session, name)
        if existing is not None:
            raise FusionError(
                f"a selection named {name!r} already exists ({existing.n_selected} samples, created "
                f"{existing.created_at:%Y-%m-%d %H:%M}); choose another name, or export it with "
                f"`selectit export --selection {name} --out FILE`"
            )
    if isinstance(criterion, Control):
        rows = control_rows(con, criterion)
    elif isinstance(criterion, Listed):
        rows = listed_rows(con, criterion, dataset)
    else:
        rows = chosen(con, criterion)
    params = params_of(con).as_json() | {
        "dataset": dataset,
        "criterion": criterion.as_json(),
        "n_rankable": n_rankable,
    }
    found = provenance(con, dataset_id(con, dataset))
    if found is not None:  # what --dedup used and found: the signature config, the counts
        params["dedup"] = found
    with db.session_scope(engine) as session:
        if _selection_by_name(session, name) is not None:  # created meanwhile by someone else
            raise FusionError(f"a selection named {name!r} already exists; choose another name")
        ds_id = session.scalars(sa.select(Dataset.id).where(Dataset.name == valid_name(dataset, "dataset"))).one()
        selection = Selection(name=name, dataset_id=ds_id, params=params, n_selected=len(rows))
        session.add(selection)
        session.flush()
        if rows:
            session.execute(
                sa.insert(SelectionSample),
                [{"selection_id": selection.id, "rank": r.rank, "sample_id": r.sample_id, "score": r.s_model} for r in rows],
            )
        return selection.id, len(rows), n_rankable


class IncompleteScoring(FusionError):
    """--require-complete on a dataset that is only partly scored."""


def partial_warning(cov: Any, require_complete: bool = False) -> str | None:
    """One line when only part of the dataset is rankable (a selection then takes its share of the
    rankable samples only); None when every sample is. `require_complete` makes it an error.

    `cov` is `fusion.coverage(con, dataset)`.
    """
    if not cov.n_not_rankable:
        return None
    text = (f"only {cov.n_rankable} of {cov.n_samples} samples of {cov.dataset} are rankable "
            f"({cov.samples_with_missing} with missing cells, {cov.samples_with_failed} with failed cells), and the "
            f"selection is taken from those; finish scoring with `selectit score --dataset {cov.dataset}`")
    if getattr(cov, "n_rankable_last", None):
        text += (f" ({cov.n_rankable_last} more have their last turn scored but not every turn, which "
                 f"--turns-agg {cov.turns_agg} needs; --turns-agg last ranks them)")
    if require_complete:
        raise IncompleteScoring(text + ", or leave out --require-complete")
    return text
