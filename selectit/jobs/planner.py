"""The planner: which cells a command is about (scope), which are missing, and jobs for them.

A *cell* is (sample, model version, prompt version, turn); `turn` counts a conversation's rated
assistant turns back from the last (0: the sample's `output`, a single-turn sample's only turn).
The planner turns the missing cells into jobs — token-balanced chunks of `samples × prompts` for
one model version at one turn, or at every turn (`ALL_TURNS`: a conversation whose turns all miss
the same prompts is scored in one pass) — and commits them;
runners (`selectit.jobs.runner`) claim and score them. Planning is idempotent: a cell already in a
queued or running job is left out, and two planners run one after the other (a transaction
lock), so no cell is ever in two open jobs.

At scale (a million samples × models × prompts) the work stays in the database: one row per
sample carrying a bit per (model, prompt) cell kind, and only samples with work left reach
Python; chunking is one pass over them; jobs and their membership rows are written by COPY on
PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from selectit.contract import OPEN_JOB_STATUSES, RENDERING, CellStatus, JobStatus, Layout, Turns
from selectit.errors import NoSuchModel, SelectitError
from selectit.scoring.registry import DEFAULT_PROMPT_SET
from selectit.settings import DEFAULT_SETTINGS, Settings
from selectit.store import db, lookups
from selectit.store.schema import (
    DatasetSample,
    Job,
    JobSample,
    Prompt,
    utcnow,
)

MAX_SAMPLES_PER_JOB = 1_000
#: `Job.turn` of a job that rates every turn of its samples (conversations): one pass each.
ALL_TURNS = -1
#: Characters per token for the planner's estimate (English text, BPE tokenizers).
CHARS_PER_TOKEN = 4
#: An arbitrary constant key for the planner's transaction lock: one planner at a time.
PLAN_LOCK_KEY = 0x5E1EC7


class JobError(SelectitError):
    """A scoring request that cannot be planned (unknown dataset, model or prompt set)."""


# --------------------------------------------------------------------------------------------
# Scope: which datasets, model versions and prompt versions a command is about
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    dataset_ids: tuple[int, ...] | None  # None: every dataset
    model_ids: tuple[int, ...]
    prompt_ids: tuple[int, ...]
    turns: Turns = Turns.ALL  # every rated turn of a conversation, or its last only


def _names(session: Session, column: sa.ColumnElement, *where: sa.ColumnElement) -> str:
    return ", ".join(sorted(set(session.scalars(sa.select(column).where(*where))))) or "none"


def resolve_scope(session: Session, *, dataset: str | None = None, model: str | None = None,
                  prompt_set: str | None = None, strict: bool = True, turns: Turns | str = Turns.ALL) -> Scope:
    """The active model and prompt versions (and datasets) named, with errors that say what to do.

    Reads only. `strict=False` (the periodic planner) returns an empty scope instead of failing
    when nothing is registered yet.
    """
    dataset_ids = None
    if dataset is not None:
        dataset_ids = (lookups.dataset_id(session, dataset),)
    try:
        model_ids = tuple(sorted(m.id for m in lookups.active_models(session, None if model is None else [model])))
    except NoSuchModel:
        if strict:
            raise
        model_ids = ()
    pq = sa.select(Prompt.id).where(Prompt.active.is_(True)).order_by(Prompt.set_name, Prompt.position)
    if prompt_set is not None:
        pq = pq.where(Prompt.set_name == prompt_set)
    prompt_ids = tuple(session.scalars(pq))
    if not prompt_ids and strict:
        if prompt_set in (None, DEFAULT_PROMPT_SET) and session.scalar(
                sa.select(sa.func.count()).select_from(Prompt).where(Prompt.set_name == DEFAULT_PROMPT_SET)) == 0:
            raise JobError(f"the database has no prompt set, not even the built-in {DEFAULT_PROMPT_SET!r}. "
                           "Run `selectit init` to create it (or `selectit prompts import FILE --set NAME "
                           "--layout reference` for your own).")
        sets = _names(session, Prompt.set_name, Prompt.active.is_(True))
        raise JobError(f"no active prompt set named {prompt_set!r} (prompt sets: {sets}). "
                       f"Run `selectit prompts import FILE --set {prompt_set} --layout reference` first.")
    return Scope(dataset_ids, model_ids, prompt_ids, Turns(turns))


# --------------------------------------------------------------------------------------------
# Missing cells
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MissingRow:
    """The missing cells of one sample's turn for one model version within one prompt set."""

    model_id: int
    set_name: str
    sample_id: int
    prompt_ids: tuple[int, ...]
    est_tokens: int
    turn: int = 0


def ids_sql(values: Sequence[int] | None) -> str:
    # Integer ids from our own queries, inlined so the statement has no parameter-count limit.
    return ",".join(str(int(v)) for v in values or ()) or "NULL"


def _quoted(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)  # enum values: no quotes inside


#: One bit per (model version, prompt version) of the scope in a BIGINT (sign bit unused);
#: larger scopes are planned in slices of this many cell kinds.
MAX_CELL_BITS = 62


@dataclass(frozen=True)
class _Kind:
    """The cells of one model version × one prompt set within a slice: their bits and prompts."""

    model_id: int
    set_name: str
    mask: int
    prompts: tuple[tuple[int, int, int, bool], ...]  # (bit, prompt id, template chars, shared-context layout)


def _slices(session: Session, scope: Scope) -> Iterator[tuple[int, list[tuple[int, int]], list[_Kind]]]:
    """(full mask, [(model, prompt)] by bit, kinds) per slice of at most MAX_CELL_BITS cell kinds."""
    prompts = session.execute(sa.select(Prompt.id, Prompt.set_name, sa.func.length(Prompt.template), Prompt.layout)
                              .where(Prompt.id.in_(scope.prompt_ids)).order_by(Prompt.id)).all()
    pairs = [(m, p) for m in scope.model_ids for p, _, _, _ in prompts]
    about = {p: (s, n, layout == Layout.SHARED_CONTEXT) for p, s, n, layout in prompts}
    for start in range(0, len(pairs), MAX_CELL_BITS):
        part = pairs[start:start + MAX_CELL_BITS]
        kinds: dict[tuple[int, str], list[tuple[int, int, int, bool]]] = {}
        for i, (m, p) in enumerate(part):
            kinds.setdefault((m, about[p][0]), []).append((1 << i, p, about[p][1], about[p][2]))
        yield ((1 << len(part)) - 1, part,
               [_Kind(m, s, sum(b for b, *_ in ps), tuple(ps)) for (m, s), ps in kinds.items()])


def _coverage_sql(scope: Scope, pairs: list[tuple[int, int]], full: int, *, exclude_open: bool) -> str:
    """One row per (sample, turn) of the scope with work left: its n_chars and the mask of covered
    cells. The turns are 0 .. n_turns − 1 of each sample (turn 0 alone with `Turns.LAST`).

    Each (model, prompt) of the slice is one bit, so a sample's turn is one row whatever the
    number of models: its finished cells (scored ok, or failed at the attempt limit) and, with
    `exclude_open`, the cells of its open jobs are OR-ed into one mask (a cell has one score row
    and lies in at most one open job, so SUM is OR). Samples whose mask is full — nearly all of
    them once a dataset is planned — are dropped inside the database; Python sees only the rest.
    """
    mp = ", ".join(f"({int(m)}, {int(p)}, CAST({1 << i} AS BIGINT))" for i, (m, p) in enumerate(pairs))
    models = ids_sql(sorted({m for m, _ in pairs}))
    ds_filter = f"WHERE dataset_id IN ({ids_sql(scope.dataset_ids)})" if scope.dataset_ids is not None else ""
    # a job's cells as one mask first, so the samples of open jobs are joined once, not × prompts
    open_cte = f""",
    jb AS (
      SELECT j.id, j.turn, CAST(SUM(mp.bit) AS BIGINT) AS bits
      FROM jobs j
      JOIN job_prompts jp ON jp.job_id = j.id
      JOIN mp ON mp.model_id = j.model_id AND mp.prompt_id = jp.prompt_id
      WHERE j.status IN ({_quoted(OPEN_JOB_STATUSES)}) AND j.model_id IN ({models})
      GROUP BY j.id, j.turn),
    o AS (
      SELECT js.sample_id, jb.turn, CAST(SUM(jb.bits) AS BIGINT) AS bits
      FROM job_samples js JOIN jb ON jb.id = js.job_id
      GROUP BY js.sample_id, jb.turn)""" if exclude_open else ""
    # a job of every turn (`ALL_TURNS`) holds its samples' cells at each of their turns
    open_join = ("LEFT JOIN o ON o.sample_id = ss.sample_id AND o.turn = ss.turn\n      "
                 f"LEFT JOIN o oa ON oa.sample_id = ss.sample_id AND oa.turn = {ALL_TURNS}") if exclude_open else ""
    if scope.turns == Turns.LAST:
        sel, last = "\n    sel AS (SELECT sample_id, 0 AS turn FROM ids),", " AND sc.turn = 0"
    else:  # turn numbers 0 .. the longest conversation's, then each sample's own
        sel, last = """
    tn(turn) AS (SELECT 0 UNION ALL SELECT turn + 1 FROM tn
                 WHERE turn + 1 < (SELECT COALESCE(MAX(s.n_turns), 1) FROM samples s JOIN ids ON ids.sample_id = s.id)),
    sel AS (SELECT ids.sample_id, tn.turn FROM ids JOIN samples s ON s.id = ids.sample_id JOIN tn ON tn.turn < s.n_turns),""", ""
    covered = ("(COALESCE(d.bits, 0) | COALESCE(o.bits, 0) | COALESCE(oa.bits, 0))" if exclude_open
               else "COALESCE(d.bits, 0)")
    return f"""
    WITH RECURSIVE mp(model_id, prompt_id, bit) AS (VALUES {mp}),
    ids AS (SELECT DISTINCT sample_id FROM dataset_samples {ds_filter}),{sel}
    d AS (
      SELECT sc.sample_id, sc.turn, CAST(SUM(mp.bit) AS BIGINT) AS bits
      FROM scores sc JOIN mp ON mp.model_id = sc.model_id AND mp.prompt_id = sc.prompt_id
      WHERE sc.model_id IN ({models}) AND sc.rendering = {RENDERING}
        AND (sc.status = '{CellStatus.OK}' OR sc.attempts >= :max_attempts){last}
      GROUP BY sc.sample_id, sc.turn){open_cte},
    todo AS (
      SELECT ss.sample_id, ss.turn, {covered} AS covered
      FROM sel ss
      LEFT JOIN d ON d.sample_id = ss.sample_id AND d.turn = ss.turn
      {open_join}
      WHERE {covered} <> {int(full)})
    SELECT t.sample_id, s.n_chars, t.covered, t.turn, s.n_turns
    FROM todo t JOIN samples s ON s.id = t.sample_id
    ORDER BY t.sample_id, t.turn
    """


def _token_table(kind_prompts: Sequence[int]) -> tuple[int, tuple[int, ...]]:
    """(k, T) with Σ_p (n + len_p) // 4 == k · (n // 4) + T[n % 4] for every n ≥ 0: the planner's
    per-sample estimate without a loop over the prompts."""
    return len(kind_prompts), tuple(sum((r + n) // CHARS_PER_TOKEN for n in kind_prompts)
                                    for r in range(CHARS_PER_TOKEN))


def _missing_by_kind(session: Session, scope: Scope, settings: Settings, *, exclude_open: bool
                     ) -> Iterator[tuple[int, tuple[int, ...], str, int, int, int, int]]:
    """(model_id, prompt_ids, set_name, sample_id, est_tokens, turn, n_turns) of every sample's turn
    with missing cells, in sample order per slice.

    A turn's estimate is its sample's (an upper bound on its prompt), except in one pass: where
    every turn of a conversation misses the same shared-context prompts (`whole_conversations`
    makes it one job), the transcript is counted once, on the last turn, and each earlier turn
    adds only its rating questions. So a conversation costs in these tokens what the engine runs
    for it, and a rate recorded on single-turn data times conversations too.
    """
    if not scope.model_ids or not scope.prompt_ids:
        return
    for full, pairs, kinds in _slices(session, scope):
        rows = session.execute(sa.text(_coverage_sql(scope, pairs, full, exclude_open=exclude_open)),
                               {"max_attempts": settings.max_cell_attempts})
        memo: dict[tuple[int, int], tuple[tuple[int, ...], int, tuple[int, ...], int | None]] = {}

        def one_sample(rows: list[tuple[int, int, int, int, int]]
                       ) -> list[tuple[int, tuple[int, ...], str, int, int, int, int]]:
            out, branches = [], []
            for sample_id, n_chars, covered, turn, n_turns in rows:
                missing = full & ~covered
                for kind in kinds:
                    bits = missing & kind.mask
                    if not bits:
                        continue
                    about = memo.get((kind.model_id, bits))
                    if about is None:
                        chosen = [(p, n, shared) for b, p, n, shared in kind.prompts if bits & b]
                        branch = (sum(n // CHARS_PER_TOKEN for _, n, _ in chosen)
                                  if all(shared for *_, shared in chosen) else None)
                        about = memo[(kind.model_id, bits)] = (tuple(p for p, _, _ in chosen),
                                                                *_token_table([n for _, n, _ in chosen]), branch)
                    prompt_ids, k, table, branch = about
                    out.append((kind.model_id, prompt_ids, kind.set_name, sample_id,
                                k * (n_chars // CHARS_PER_TOKEN) + table[n_chars % CHARS_PER_TOKEN], turn, n_turns))
                    branches.append(branch)
            return _one_pass(out, branches) if len(out) > 1 else out

        held: list[tuple[int, int, int, int, int]] = []
        for row in rows:
            if held and held[0][0] != row[0]:
                yield from one_sample(held)
                held.clear()
            held.append(row)
        if held:
            yield from one_sample(held)


def one_pass(turns: Iterable[tuple[int, Sequence[int]]], n_turns: int) -> bool:
    """Whether a conversation's owed (turn, prompt ids) cover every one of its `n_turns` turns with
    the same prompts: its job scores it whole, in one pass (`whole_conversations`)."""
    turns = list(turns)
    return (n_turns > 1 and len(turns) == n_turns and {t for t, _ in turns} == set(range(n_turns))
            and len({tuple(p) for _, p in turns}) == 1)


def _one_pass(rows: list[tuple[int, tuple[int, ...], str, int, int, int, int]], branches: list[int | None]
              ) -> list[tuple[int, tuple[int, ...], str, int, int, int, int]]:
    """One sample's rows, its earlier turns counted by their rating questions alone (`branches`:
    each row's, None outside the shared-context layout) where it runs in one pass."""
    kinds: dict[tuple[int, str], list[int]] = {}
    for i, row in enumerate(rows):
        kinds.setdefault((row[0], row[2]), []).append(i)
    out = list(rows)
    for at in kinds.values():
        branch = branches[at[0]]
        if branch is not None and one_pass(((rows[i][5], rows[i][1]) for i in at), rows[at[0]][6]):
            for i in at:
                if rows[i][5] != 0:  # turn 0, the last, carries the transcript
                    out[i] = (*rows[i][:4], branch, *rows[i][5:])
    return out


def missing_cells(session: Session, scope: Scope, *, exclude_open: bool = False,
                  settings: Settings = DEFAULT_SETTINGS) -> list[MissingRow]:
    """Cells never scored, or failed below the attempt limit, grouped per (model, set, sample).

    With `exclude_open`, cells already in a queued or running job are left out too (what the
    planner needs).
    """
    return [MissingRow(m, s, sid, pids, tok, turn)
            for m, pids, s, sid, tok, turn, _ in _missing_by_kind(session, scope, settings, exclude_open=exclude_open)]


def total_cells(session: Session, scope: Scope) -> int:
    """Cells of the scope: distinct samples' rated turns (their last only, with `Turns.LAST`) ×
    model versions × prompt versions."""
    ds = f"WHERE dataset_id IN ({ids_sql(scope.dataset_ids)})" if scope.dataset_ids is not None else ""
    per = "1" if scope.turns == Turns.LAST else "s.n_turns"
    n = session.scalar(sa.text(f"SELECT COALESCE(SUM({per}), 0) FROM samples s WHERE s.id IN "
                               f"(SELECT sample_id FROM dataset_samples {ds})")) or 0
    return n * len(scope.model_ids) * len(scope.prompt_ids)


def _failed_in_scope(scope: Scope) -> str:
    """The WHERE clause of the scope's failed score rows."""
    ds = ("" if scope.dataset_ids is None else " AND sample_id IN (SELECT sample_id FROM dataset_samples "
          f"WHERE dataset_id IN ({ids_sql(scope.dataset_ids)}))")
    return (f"status = '{CellStatus.FAILED}' AND rendering = {RENDERING} AND model_id IN ({ids_sql(scope.model_ids)}) "
            f"AND prompt_id IN ({ids_sql(scope.prompt_ids)}){ds}")


def reset_failed(session: Session, scope: Scope) -> int:
    """Give the scope's failed cells their attempts back (`score --retry-failed`): each is missing
    again, so the next plan puts it in a job, and it is tried `max_cell_attempts` times more. The
    row (and its error) stays until the cell is scored again. Returns how many were reset."""
    return session.execute(sa.text(f"UPDATE scores SET attempts = 0 WHERE {_failed_in_scope(scope)} "
                                   "AND attempts > 0")).rowcount or 0


@dataclass(frozen=True)
class FailedCells:
    """The scope's failed cells, as a run ends."""

    by_run: int  # written failed by `worker` since `since` (its failed attempts and the jobs it gave up)
    retryable: int  # below the attempt limit: the next run retries them
    exhausted: int  # at the attempt limit: retried only after `reset_failed`


def failed_cells(session: Session, scope: Scope, settings: Settings, *, worker: str | None = None,
                 since: dt.datetime | None = None) -> FailedCells:
    """Count the scope's failed cells (one query); `by_run` needs `worker` and `since`."""
    since = since or utcnow()
    row = session.execute(sa.text(  # worker = NULL is never true: no `by_run` without a worker
        "SELECT COALESCE(SUM(CASE WHEN worker = :worker AND scored_at >= :since THEN 1 ELSE 0 END), 0), "
        f"COALESCE(SUM(CASE WHEN attempts < :limit THEN 1 ELSE 0 END), 0), "
        f"COALESCE(SUM(CASE WHEN attempts >= :limit THEN 1 ELSE 0 END), 0) FROM scores WHERE {_failed_in_scope(scope)}"
    ).bindparams(sa.bindparam("since", type_=sa.DateTime())),  # stored as the DateTime column stores it
        {"limit": settings.max_cell_attempts, "worker": worker, "since": since}).one()
    return FailedCells(*(int(v) for v in row))


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------


@dataclass
class Chunk:
    model_id: int
    prompt_ids: tuple[int, ...]
    turn: int = 0  # or ALL_TURNS
    sample_ids: list[int] = field(default_factory=list)
    est_tokens: int = 0
    n_cells: int = 0


def whole_conversations(rows: Iterable[tuple[int, tuple[int, ...], str, int, int, int, int]]
                        ) -> Iterator[tuple[int, tuple[int, ...], str, int, int, int, int]]:
    """`_missing_by_kind`'s rows, where every turn of a conversation misses the same prompts of one
    model (and prompt set), as one row at `ALL_TURNS`: its job scores the whole conversation in one
    pass (its turns' prompts branch off one transcript). Other rows pass as they are. The rows of
    a sample come together (all its turns, every model), so one sample is held at a time."""
    held: list[tuple[int, tuple[int, ...], str, int, int, int, int]] = []

    def flush() -> Iterator[tuple[int, tuple[int, ...], str, int, int, int, int]]:
        kinds: dict[tuple[int, str], list[tuple[int, tuple[int, ...], str, int, int, int, int]]] = {}
        for row in held:
            kinds.setdefault((row[0], row[2]), []).append(row)
        for group in kinds.values():
            m, pids, name, sample, _, _, n_turns = group[0]
            if one_pass(((r[5], r[1]) for r in group), n_turns):
                yield (m, pids, name, sample, sum(r[4] for r in group), ALL_TURNS, n_turns)
            else:
                yield from group
        held.clear()

    for row in rows:
        if held and held[0][3] != row[3]:
            yield from flush()
        if row[6] <= 1:
            yield row
        else:
            held.append(row)
    if held:
        yield from flush()


def chunks(rows: Iterable[tuple[int, tuple[int, ...], str, int, int, int, int]], max_tokens: int,
           max_samples: int) -> list[Chunk]:
    """Token-balanced chunks of samples sharing the same missing prompts and turn, per model version.

    Greedy in sample order within each (model, prompts): a chunk is closed when the next sample
    would take it over `max_tokens` or `max_samples` (a single sample over the limit is a job
    of its own). Rows come from `_missing_by_kind`; no sort, one pass.
    """
    done: list[Chunk] = []
    current: dict[tuple[int, tuple[int, ...], int], Chunk] = {}
    for model_id, prompt_ids, _set, sample_id, tokens, turn, n_turns in rows:
        c = current.get((model_id, prompt_ids, turn))
        if c is None:
            c = current[(model_id, prompt_ids, turn)] = Chunk(model_id, prompt_ids, turn)
        elif c.est_tokens + tokens > max_tokens or len(c.sample_ids) >= max_samples:
            done.append(c)
            c = current[(model_id, prompt_ids, turn)] = Chunk(model_id, prompt_ids, turn)
        c.sample_ids.append(sample_id)
        c.est_tokens += tokens
        c.n_cells += len(prompt_ids) * (n_turns if turn == ALL_TURNS else 1)
    done.extend(current.values())
    done.sort(key=lambda c: (c.model_id, c.turn, c.prompt_ids, c.sample_ids[0]))
    return done


# The inputs of a plan that found (or left) nothing missing, per database and scope: planning
# again with the same inputs cannot find anything new, so the control loop's periodic plan costs
# one cheap query instead of a pass over every sample. Only new work changes them: linked samples
# (ingest), failed cells (their count and attempts); the scope itself is the key. Cells scored ok
# and jobs created or finished leave them as they are. One exception is not in the inputs: a
# failed cell below the attempt limit inside an open job becomes missing when that job ends, with
# no input changing — so a plan that sees such a cell is never remembered as settled.
_settled: dict[tuple[str, Scope, int], tuple[int, ...]] = {}


def forget_settled() -> None:
    """Forget the settled inputs: the next plan makes a full pass (what a benchmark measures)."""
    _settled.clear()


def _inputs(session: Session, scope: Scope, settings: Settings) -> tuple[int, ...]:
    ds = f"WHERE dataset_id IN ({ids_sql(scope.dataset_ids)})" if scope.dataset_ids is not None else ""
    row = session.execute(sa.text(
        f"SELECT (SELECT COUNT(*) FROM dataset_samples {ds}), "
        f"(SELECT COALESCE(SUM(sample_id), 0) FROM dataset_samples {ds}), "
        f"(SELECT COALESCE(MAX(id), 0) FROM datasets), "
        f"(SELECT COUNT(*) FROM scores WHERE status = '{CellStatus.FAILED}' "
        f" AND model_id IN ({ids_sql(scope.model_ids)})), "
        f"(SELECT COALESCE(SUM(attempts), 0) FROM scores WHERE status = '{CellStatus.FAILED}' "
        f" AND model_id IN ({ids_sql(scope.model_ids)})), "
        f"(SELECT COUNT(*) FROM scores WHERE status = '{CellStatus.FAILED}' "
        f" AND model_id IN ({ids_sql(scope.model_ids)}) AND attempts < :max_attempts)"),
        {"max_attempts": settings.max_cell_attempts}).one()
    return tuple(int(v) for v in row)


def plan(engine: Engine, *, dataset: str | None = None, model: str | None = None,
         prompt_set: str | None = None, max_tokens_per_job: int | None = None,
         max_samples_per_job: int = MAX_SAMPLES_PER_JOB, strict: bool = True,
         settings: Settings = DEFAULT_SETTINGS, turns: Turns | str = Turns.ALL) -> list[int]:
    """Create jobs for every missing cell not already in an open job; commit; return their ids.

    Idempotent: planning twice, or two planners at once, never put a cell in two open jobs. A
    plan whose inputs are those of this process's last plan of the same scope returns at once
    (`_settled`): what the control loop runs every minute costs one small query, not a pass.
    """
    with db.session_scope(engine) as session:
        # Two planners (the control loop + `selectit plan`) must not both see the same cells as missing.
        db.lock_transaction(session, PLAN_LOCK_KEY)
        scope = resolve_scope(session, dataset=dataset, model=model, prompt_set=prompt_set, strict=strict,
                              turns=turns)
        if not scope.model_ids or not scope.prompt_ids:
            return []
        key = (engine.url.render_as_string(hide_password=True), scope, settings.max_cell_attempts)
        inputs = _inputs(session, scope, settings)  # before the pass: a change after it differs
        if _settled.get(key) == inputs:
            return []
        rows = _missing_by_kind(session, scope, settings, exclude_open=True)
        if scope.turns == Turns.ALL:
            rows = whole_conversations(rows)
        planned = chunks(rows, max_tokens_per_job or settings.job_tokens, max_samples_per_job)
        ids = _insert_jobs(session, planned) if planned else []
    if inputs[-1] == 0:  # no failed cell left to retry, so none can come free when a job ends
        _settled[key] = inputs  # committed: every cell missing at `inputs` is in a job now
    return ids


def _insert_jobs(session: Session, planned: list[Chunk]) -> list[int]:
    """Insert the jobs and their membership rows; the ids in the order of `planned`."""
    now = utcnow()
    rows = [{"model_id": c.model_id, "turn": c.turn, "sample_ids": c.sample_ids, "prompt_ids": list(c.prompt_ids),
             "n_cells": c.n_cells or len(c.sample_ids) * len(c.prompt_ids), "est_tokens": c.est_tokens,
             "status": str(JobStatus.QUEUED), "attempts": 0, "created_at": now} for c in planned]
    if db.is_postgres(session.bind):
        # ids first, then one COPY: a multi-row INSERT … RETURNING of 16k jobs carrying 2M sample
        # ids spends its time binding parameters.
        ids = list(session.scalars(sa.text("SELECT nextval(pg_get_serial_sequence('jobs', 'id')) "
                                           "FROM generate_series(1, :n)"), {"n": len(rows)}))
        db.copy_rows(session, "jobs", ["id", "model_id", "turn", "sample_ids", "prompt_ids", "n_cells", "est_tokens",
                                       "status", "attempts", "created_at"],
                     ((i, r["model_id"], r["turn"], json.dumps(r["sample_ids"]), json.dumps(r["prompt_ids"]), r["n_cells"],
                       r["est_tokens"], r["status"], 0, now) for i, r in zip(ids, rows)))
        # Membership rows by COPY too: it fills pages in batches, an INSERT … SELECT row by row.
        for table, member, attr in (("job_prompts", "prompt_id", "prompt_ids"), ("job_samples", "sample_id", "sample_ids")):
            db.copy_text(session, table, ["job_id", member],
                         "".join(f"{j}\t{m}\n" for j, c in zip(ids, planned) for m in getattr(c, attr)))
        return ids
    ids = list(session.scalars(sa.insert(Job).returning(Job.id, sort_by_parameter_order=True), rows))
    # Membership rows straight from the jobs' JSON lists, inside the database: no Python per row.
    for table, column, member in (("job_prompts", "prompt_ids", "prompt_id"), ("job_samples", "sample_ids", "sample_id")):
        elements, value = db.json_int_elements(session, f"j.{column}", "e")
        session.execute(sa.text(f"INSERT INTO {table} (job_id, {member}) SELECT j.id, {value} "
                                f"FROM jobs j CROSS JOIN {elements} WHERE j.id IN ({ids_sql(ids)})"))
    return ids


def open_jobs_in_scope(session: Session, scope: Scope) -> list[tuple[int, JobStatus, int]]:
    """(id, status, n_cells) of open jobs whose cells lie in the scope."""
    q = sa.select(Job.id, Job.status, Job.n_cells, Job.prompt_ids).where(
        Job.status.in_(OPEN_JOB_STATUSES), Job.model_id.in_(scope.model_ids)).order_by(Job.id)
    if scope.turns == Turns.LAST:  # a job of every turn holds last turns too: it is run whole
        q = q.where(Job.turn.in_((0, ALL_TURNS)))
    if scope.dataset_ids is not None:
        q = q.where(sa.exists().where(JobSample.job_id == Job.id, DatasetSample.sample_id == JobSample.sample_id,
                                      DatasetSample.dataset_id.in_(scope.dataset_ids)))
    prompts = set(scope.prompt_ids)
    return [(j, JobStatus(s), n) for j, s, n, pids in session.execute(q) if set(pids) <= prompts]
