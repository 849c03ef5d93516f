"""The planner: which cells a command is about (scope), which are missing, and jobs for them.

A *cell* is (sample, model version, prompt version). The planner turns the missing cells into
jobs — token-balanced chunks of `samples × prompts` for one model version — and commits them;
runners (`selectit.runner`) claim and score them. Planning is idempotent: a cell already in a
queued or running job is left out, and two planners run one after the other (a transaction
lock), so no cell is ever in two open jobs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from selectit import db
from selectit.contract import OPEN_JOB_STATUSES, CellStatus, JobStatus
from selectit.errors import SelectitError
from selectit.registry import DEFAULT_PROMPT_SET
from selectit.schema import LLM, Dataset, DatasetSample, Job, JobPrompt, JobSample, Prompt, utcnow
from selectit.settings import Settings

MAX_SAMPLES_PER_JOB = 1_000
#: Characters per token for the planner's estimate (English text, BPE tokenizers).
CHARS_PER_TOKEN = 4
#: One bit per prompt of the scope in a 64-bit integer (larger scopes are planned in slices).
MAX_PROMPT_BITS = 60
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


def _names(session: Session, column: sa.ColumnElement, *where: sa.ColumnElement) -> str:
    return ", ".join(sorted(set(session.scalars(sa.select(column).where(*where))))) or "none"


def resolve_scope(session: Session, *, dataset: str | None = None, model: str | None = None,
                  prompt_set: str | None = None, strict: bool = True) -> Scope:
    """The active model and prompt versions (and datasets) named, with errors that say what to do.

    Reads only. `strict=False` (the periodic planner) returns an empty scope instead of failing
    when nothing is registered yet.
    """
    dataset_ids = None
    if dataset is not None:
        ds = session.scalar(sa.select(Dataset.id).where(Dataset.name == dataset))
        if ds is None:
            raise JobError(f"no dataset named {dataset!r} (datasets: {_names(session, Dataset.name)}). "
                           f"Run `selectit ingest FILE --dataset {dataset}` first.")
        dataset_ids = (ds,)
    mq = sa.select(LLM.id).where(LLM.active.is_(True)).order_by(LLM.id)
    if model is not None:
        mq = mq.where(LLM.name == model)
    model_ids = tuple(session.scalars(mq))
    if not model_ids and strict:
        if model is None:
            raise JobError("no model is registered. Run `selectit model add NAME --source DIR|FILE.gguf` first.")
        raise JobError(f"no active model named {model!r} (models: {_names(session, LLM.name, LLM.active.is_(True))}). "
                       f"Run `selectit model add {model} --source DIR|FILE.gguf` first.")
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
    return Scope(dataset_ids, model_ids, prompt_ids)


# --------------------------------------------------------------------------------------------
# Missing cells
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MissingRow:
    """The missing cells of one sample for one model version within one prompt set."""

    model_id: int
    set_name: str
    sample_id: int
    prompt_ids: tuple[int, ...]
    est_tokens: int


def ids_sql(values: Sequence[int] | None) -> str:
    # Integer ids from our own queries, inlined so the statement has no parameter-count limit.
    return ",".join(str(int(v)) for v in values or ()) or "NULL"


def _quoted(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)  # enum values: no quotes inside


def _missing_sql(scope: Scope, bits: dict[int, int], *, exclude_open: bool) -> str:
    """One row per (model, sample) with work left: the bitmasks of its finished and open cells.

    Work is proportional to samples × models plus the stored scores, not to every cell: each
    prompt of the scope is one bit, scores and open jobs are summed into per-(model, sample)
    masks (a cell has one score row and lies in at most one open job, so SUM is OR).
    """
    ds_filter = f"WHERE dataset_id IN ({ids_sql(scope.dataset_ids)})" if scope.dataset_ids is not None else ""
    pm = ", ".join(f"({int(p)}, {b})" for p, b in bits.items())
    models = ids_sql(scope.model_ids)
    # a job's prompts as one mask first, so the samples of open jobs are joined once, not × K'
    open_cte = f""",
    jb AS (
      SELECT j.id, j.model_id, CAST(SUM(pm.bit) AS BIGINT) AS bits
      FROM jobs j
      JOIN job_prompts jp ON jp.job_id = j.id
      JOIN pm ON pm.prompt_id = jp.prompt_id
      WHERE j.status IN ({_quoted(OPEN_JOB_STATUSES)}) AND j.model_id IN ({models})
      GROUP BY j.id, j.model_id),
    o AS (
      SELECT jb.model_id, js.sample_id, CAST(SUM(jb.bits) AS BIGINT) AS bits
      FROM jb JOIN job_samples js ON js.job_id = jb.id
      GROUP BY jb.model_id, js.sample_id)""" if exclude_open else ""
    open_join = "LEFT JOIN o ON o.model_id = m.id AND o.sample_id = ss.sample_id" if exclude_open else ""
    open_bits = "COALESCE(o.bits, 0)" if exclude_open else "0"
    return f"""
    WITH pm(prompt_id, bit) AS (VALUES {pm}),
    sel AS (SELECT DISTINCT sample_id FROM dataset_samples {ds_filter}),
    d AS (
      SELECT sc.model_id, sc.sample_id, CAST(SUM(pm.bit) AS BIGINT) AS bits
      FROM scores sc JOIN pm ON pm.prompt_id = sc.prompt_id
      WHERE sc.model_id IN ({models}) AND (sc.status = '{CellStatus.OK}' OR sc.attempts >= :max_attempts)
      GROUP BY sc.model_id, sc.sample_id){open_cte}
    SELECT m.id, ss.sample_id, s.n_chars, COALESCE(d.bits, 0) AS done, {open_bits} AS open
    FROM sel ss
    JOIN samples s ON s.id = ss.sample_id
    CROSS JOIN (SELECT id FROM models WHERE id IN ({models})) m
    LEFT JOIN d ON d.model_id = m.id AND d.sample_id = ss.sample_id
    {open_join}
    WHERE (COALESCE(d.bits, 0) | {open_bits}) <> :full
    """


def missing_cells(session: Session, scope: Scope, *, exclude_open: bool = False,
                  settings: Settings | None = None) -> list[MissingRow]:
    """Cells never scored, or failed below the attempt limit, grouped per (model, set, sample).

    With `exclude_open`, cells already in a queued or running job are left out too (what the
    planner needs).
    """
    settings = settings or Settings.from_env()
    if not scope.model_ids or not scope.prompt_ids:
        return []
    if len(scope.prompt_ids) > MAX_PROMPT_BITS:
        return [row for i in range(0, len(scope.prompt_ids), MAX_PROMPT_BITS)
                for row in missing_cells(session, Scope(scope.dataset_ids, scope.model_ids,
                                                        scope.prompt_ids[i:i + MAX_PROMPT_BITS]),
                                         exclude_open=exclude_open, settings=settings)]
    prompts = session.execute(sa.select(Prompt.id, Prompt.set_name, sa.func.length(Prompt.template))
                              .where(Prompt.id.in_(scope.prompt_ids)).order_by(Prompt.id)).all()
    bits = {pid: 1 << i for i, (pid, _, _) in enumerate(prompts)}
    full = sum(bits.values())
    # per prompt set: its mask and its prompts as (bit, id, template chars)
    sets: dict[str, list[tuple[int, int, int]]] = {}
    for pid, set_name, n in prompts:
        sets.setdefault(set_name, []).append((bits[pid], pid, n))
    set_masks = [(name, sum(b for b, _, _ in ps), ps) for name, ps in sets.items()]
    rows = session.execute(sa.text(_missing_sql(scope, bits, exclude_open=exclude_open)),
                           {"max_attempts": settings.max_cell_attempts, "full": full})
    out = []
    for model_id, sample_id, n_chars, done, open_ in rows:
        missing = full & ~(int(done) | int(open_))
        for name, mask, ps in set_masks:
            if missing & mask:
                chosen = [(pid, n) for b, pid, n in ps if missing & b]
                tok = sum((n_chars + n) // CHARS_PER_TOKEN for _, n in chosen)
                out.append(MissingRow(model_id, name, sample_id, tuple(pid for pid, _ in chosen), tok))
    return out


def total_cells(session: Session, scope: Scope) -> int:
    """Cells of the scope: distinct samples × model versions × prompt versions."""
    ds = f"WHERE dataset_id IN ({ids_sql(scope.dataset_ids)})" if scope.dataset_ids is not None else ""
    n = session.scalar(sa.text(f"SELECT COUNT(DISTINCT sample_id) FROM dataset_samples {ds}")) or 0
    return n * len(scope.model_ids) * len(scope.prompt_ids)


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------


@dataclass
class Chunk:
    model_id: int
    prompt_ids: tuple[int, ...]
    sample_ids: list[int] = field(default_factory=list)
    est_tokens: int = 0


def chunks(rows: list[MissingRow], max_tokens: int, max_samples: int) -> Iterator[Chunk]:
    """Token-balanced chunks of samples sharing the same missing prompts, per model version."""
    rows = sorted(rows, key=lambda r: (r.model_id, r.prompt_ids, r.sample_id))
    current: Chunk | None = None
    for r in rows:
        if current is None or (current.model_id, current.prompt_ids) != (r.model_id, r.prompt_ids):
            if current is not None:
                yield current
            current = Chunk(r.model_id, r.prompt_ids)
        elif current.est_tokens + r.est_tokens > max_tokens or len(current.sample_ids) >= max_samples:
            yield current
            current = Chunk(r.model_id, r.prompt_ids)
        current.sample_ids.append(r.sample_id)
        current.est_tokens += r.est_tokens
    if current is not None:
        yield current


def plan(engine: Engine, *, dataset: str | None = None, model: str | None = None,
         prompt_set: str | None = None, max_tokens_per_job: int | None = None,
         max_samples_per_job: int = MAX_SAMPLES_PER_JOB, strict: bool = True,
         settings: Settings | None = None) -> list[int]:
    """Create jobs for every missing cell not already in an open job; commit; return their ids.

    Idempotent: planning twice, or two planners at once, never put a cell in two open jobs.
    """
    settings = settings or Settings.from_env()
    with db.session_scope(engine) as session:
        # Two planners (beat + `selectit plan`) must not both see the same cells as missing.
        db.lock_transaction(session, PLAN_LOCK_KEY)
        scope = resolve_scope(session, dataset=dataset, model=model, prompt_set=prompt_set, strict=strict)
        rows = missing_cells(session, scope, exclude_open=True, settings=settings)
        planned = list(chunks(rows, max_tokens_per_job or settings.job_tokens, max_samples_per_job))
        if not planned:
            return []
        now = utcnow()
        ids = list(session.scalars(
            sa.insert(Job).returning(Job.id, sort_by_parameter_order=True),
            [{"model_id": c.model_id, "sample_ids": c.sample_ids, "prompt_ids": list(c.prompt_ids),
              "n_cells": len(c.sample_ids) * len(c.prompt_ids), "est_tokens": c.est_tokens,
              "status": str(JobStatus.QUEUED), "attempts": 0, "created_at": now} for c in planned]))
        _insert_members(session, ids, planned)
    return ids


def _insert_members(session: Session, ids: list[int], planned: list[Chunk]) -> None:
    prompts = [{"job_id": j, "prompt_id": p} for j, c in zip(ids, planned) for p in c.prompt_ids]
    session.execute(sa.insert(JobPrompt), prompts)
    if db.is_postgres(session.bind):
        # COPY: millions of membership rows in seconds (1M samples × 2 models).
        raw = session.connection().connection.driver_connection
        with raw.cursor() as cur, cur.copy("COPY job_samples (job_id, sample_id) FROM STDIN") as copy:
            for j, c in zip(ids, planned):
                for s in c.sample_ids:
                    copy.write_row((j, s))
    else:
        session.execute(sa.insert(JobSample),
                        [{"job_id": j, "sample_id": s} for j, c in zip(ids, planned) for s in c.sample_ids])


def open_jobs_in_scope(session: Session, scope: Scope) -> list[tuple[int, JobStatus, int]]:
    """(id, status, n_cells) of open jobs whose cells lie in the scope."""
    q = sa.select(Job.id, Job.status, Job.n_cells, Job.prompt_ids).where(
        Job.status.in_(OPEN_JOB_STATUSES), Job.model_id.in_(scope.model_ids)).order_by(Job.id)
    if scope.dataset_ids is not None:
        q = q.where(sa.exists().where(JobSample.job_id == Job.id, DatasetSample.sample_id == JobSample.sample_id,
                                      DatasetSample.dataset_id.in_(scope.dataset_ids)))
    prompts = set(scope.prompt_ids)
    return [(j, JobStatus(s), n) for j, s, n, pids in session.execute(q) if set(pids) <= prompts]
