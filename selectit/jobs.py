"""Planning and running scoring jobs: the one code path behind `selectit score` and the fleet.

A *cell* is (sample, model version, prompt version). The planner turns the missing cells into
jobs — token-balanced chunks of `samples × prompts` for one model version — and commits them;
a runner (the in-process `selectit score` or a Celery worker) claims a job with a lease, scores
the cells of it that are still missing in small committed batches, renewing the lease after each
batch, and marks it done. Scores are written insert-or-ignore (a failed cell is updated in place,
attempts + 1), so a killed runner loses at most one batch and nothing is ever written twice.

Claiming is a guarded UPDATE (`… WHERE status = 'queued'`): on PostgreSQL the row is picked with
`FOR UPDATE SKIP LOCKED`, on SQLite every transaction is `BEGIN IMMEDIATE` (see `db.make_engine`).
Leases that expire (a worker died) go back to `queued` through `requeue_expired`; after
`max_job_attempts()` claims a job is `failed`, and its unscored cells are recorded as failed
cells, which later plans retry until each reaches `max_cell_attempts()`.

No torch here: the scorer is passed in (`scorer_for`), so this module imports without it.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from selectit import db
from selectit.errors import SelectitError
from selectit.schema import (
    LLM,
    Dataset,
    DatasetSample,
    Job,
    JobPrompt,
    JobSample,
    Prompt,
    Sample,
    Score,
    utcnow,
)

if TYPE_CHECKING:
    from selectit.scorer import CellResult, Scorer

OPEN = ("queued", "running")
#: Estimated prompt tokens per job (samples × prompts); a job is a few minutes on one GPU.
DEFAULT_MAX_TOKENS_PER_JOB = 200_000
MAX_SAMPLES_PER_JOB = 1_000
DEFAULT_BATCH_SIZE = 16
#: Characters per token for the planner's estimate (English text, BPE tokenizers).
CHARS_PER_TOKEN = 4
MAX_PROMPT_BITS = 60
# An arbitrary constant key for pg_advisory_xact_lock: one planner at a time.
PLAN_LOCK_KEY = 0x5E1EC7


class JobError(SelectitError):
    """A scoring request that cannot be planned (unknown dataset, model or prompt set)."""


def _env_number(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise JobError(f"${name} must be a number, not {value!r}") from exc


def max_cell_attempts() -> int:
    """How many times a failing cell is tried before it stays failed [$SELECTIT_MAX_ATTEMPTS, 3]."""
    return int(_env_number("SELECTIT_MAX_ATTEMPTS", 3))


def max_job_attempts() -> int:
    """How many claims of one job may expire before it is failed [$SELECTIT_MAX_JOB_ATTEMPTS, 3]."""
    return int(_env_number("SELECTIT_MAX_JOB_ATTEMPTS", 3))


def job_tokens() -> int:
    """Estimated prompt tokens per planned job [$SELECTIT_JOB_TOKENS, 200000]."""
    return int(_env_number("SELECTIT_JOB_TOKENS", DEFAULT_MAX_TOKENS_PER_JOB))


def default_batch_size() -> int:
    """Samples per committed batch of a job [$SELECTIT_BATCH_SIZE, 16]."""
    return max(1, int(_env_number("SELECTIT_BATCH_SIZE", DEFAULT_BATCH_SIZE)))


def lease_seconds() -> float:
    """A claim's lease, renewed after every batch [$SELECTIT_LEASE_SECONDS, 300]."""
    return _env_number("SELECTIT_LEASE_SECONDS", 300.0)


def worker_id() -> str:
    """`host:pid` of this process: lets a rerun on the same host see that a holder is dead."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def dead_local_workers(workers: Sequence[str | None]) -> list[str]:
    """The `host:pid` ids among `workers` that ran on this host and whose process is gone."""
    host = socket.gethostname()
    dead = []
    for w in workers:
        if not w or ":" not in w:
            continue
        h, _, pid = w.rpartition(":")
        if h == host and pid.isdigit() and not _pid_alive(int(pid)):
            dead.append(w)
    return dead


# --------------------------------------------------------------------------------------------
# Scope: which datasets, model versions and prompt versions a command is about
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    dataset_ids: tuple[int, ...] | None  # None: every dataset
    model_ids: tuple[int, ...]
    prompt_ids: tuple[int, ...]


def resolve_scope(session: Session, *, dataset: str | None = None, model: str | None = None,
                  prompt_set: str | None = None, strict: bool = True) -> Scope:
    """The active model and prompt versions (and datasets) named, with errors that say what to do.

    `strict=False` (the periodic planner) returns an empty scope instead of failing when nothing
    is registered yet.
    """
    _ensure_default_prompts(session)
    dataset_ids = None
    if dataset is not None:
        ds = session.scalar(sa.select(Dataset.id).where(Dataset.name == dataset))
        if ds is None:
            names = ", ".join(session.scalars(sa.select(Dataset.name).order_by(Dataset.name))) or "none"
            raise JobError(f"no dataset named {dataset!r} (datasets: {names}). "
                           f"Run `selectit ingest FILE --dataset {dataset}` first.")
        dataset_ids = (ds,)
    mq = sa.select(LLM.id).where(LLM.active.is_(True)).order_by(LLM.id)
    if model is not None:
        mq = mq.where(LLM.name == model)
    model_ids = tuple(session.scalars(mq))
    if not model_ids and strict:
        if model is None:
            raise JobError("no model is registered. Run `selectit model add NAME --source DIR|FILE.gguf` first.")
        names = ", ".join(sorted(set(session.scalars(sa.select(LLM.name).where(LLM.active.is_(True)))))) or "none"
        raise JobError(f"no active model named {model!r} (models: {names}). "
                       f"Run `selectit model add {model} --source DIR|FILE.gguf` first.")
    pq = sa.select(Prompt.id).where(Prompt.active.is_(True)).order_by(Prompt.set_name, Prompt.position)
    if prompt_set is not None:
        pq = pq.where(Prompt.set_name == prompt_set)
    prompt_ids = tuple(session.scalars(pq))
    if not prompt_ids and strict:
        sets = ", ".join(sorted(set(session.scalars(sa.select(Prompt.set_name).where(Prompt.active.is_(True)))))) or "none"
        raise JobError(f"no active prompt set named {prompt_set!r} (prompt sets: {sets}). "
                       f"Run `selectit prompts import FILE --set {prompt_set} --layout reference` first.")
    return Scope(dataset_ids, model_ids, prompt_ids)


def _ensure_default_prompts(session: Session) -> None:
    try:
        from selectit.registry import ensure_default_prompts
    except ImportError:  # pragma: no cover - the registry is part of the package
        return
    ensure_default_prompts(session)


# --------------------------------------------------------------------------------------------
# Planner
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MissingRow:
    """The missing cells of one sample for one model version within one prompt set."""

    model_id: int
    set_name: str
    sample_id: int
    prompt_ids: tuple[int, ...]
    est_tokens: int


def _ids(values: Sequence[int]) -> str:
    # Integer ids from our own queries, inlined so the statement has no parameter-count limit.
    return ",".join(str(int(v)) for v in values) or "NULL"


def _missing_sql(scope: Scope, bits: dict[int, int], *, exclude_open: bool) -> str:
    """One row per (model, sample) with work left: the bitmasks of its finished and open cells.

    Work is proportional to samples × models plus the stored scores, not to every cell: each
    prompt of the scope is one bit, scores and open jobs are summed into per-(model, sample)
    masks (a cell has one score row and lies in at most one open job, so SUM is OR).
    """
    ds_filter = f"WHERE dataset_id IN ({_ids(scope.dataset_ids)})" if scope.dataset_ids is not None else ""
    pm = ", ".join(f"({int(p)}, {b})" for p, b in bits.items())
    models = _ids(scope.model_ids)
    # a job's prompts as one mask first, so the samples of open jobs are joined once, not × K'
    open_cte = f""",
    jb AS (
      SELECT j.id, j.model_id, CAST(SUM(pm.bit) AS BIGINT) AS bits
      FROM jobs j
      JOIN job_prompts jp ON jp.job_id = j.id
      JOIN pm ON pm.prompt_id = jp.prompt_id
      WHERE j.status IN ('queued', 'running') AND j.model_id IN ({models})
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
      WHERE sc.model_id IN ({models}) AND (sc.status = 'ok' OR sc.attempts >= :max_attempts)
      GROUP BY sc.model_id, sc.sample_id){open_cte}
    SELECT m.id, ss.sample_id, s.n_chars, COALESCE(d.bits, 0) AS done, {open_bits} AS open
    FROM sel ss
    JOIN samples s ON s.id = ss.sample_id
    CROSS JOIN (SELECT id FROM models WHERE id IN ({models})) m
    LEFT JOIN d ON d.model_id = m.id AND d.sample_id = ss.sample_id
    {open_join}
    WHERE (COALESCE(d.bits, 0) | {open_bits}) <> :full
    """


def missing_cells(session: Session, *, dataset: str | None = None, model: str | None = None,
                  prompt_set: str | None = None, exclude_open: bool = False,
                  scope: Scope | None = None) -> list[MissingRow]:
    """Cells never scored, or failed below the attempt limit, grouped per (model, set, sample).

    With `exclude_open`, cells already in a queued or running job are left out too (what the
    planner needs).
    """
    scope = scope or resolve_scope(session, dataset=dataset, model=model, prompt_set=prompt_set)
    if not scope.model_ids or not scope.prompt_ids:
        return []
    if len(scope.prompt_ids) > MAX_PROMPT_BITS:  # one bit per prompt in a 64-bit integer
        return [row for i in range(0, len(scope.prompt_ids), MAX_PROMPT_BITS)
                for row in missing_cells(session, exclude_open=exclude_open, scope=Scope(
                    scope.dataset_ids, scope.model_ids, scope.prompt_ids[i:i + MAX_PROMPT_BITS]))]
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
                           {"max_attempts": max_cell_attempts(), "full": full})
    out = []
    for model_id, sample_id, n_chars, done, open_ in rows:
        missing = full & ~(int(done) | int(open_))
        for name, mask, ps in set_masks:
            if missing & mask:
                chosen = [(pid, n) for b, pid, n in ps if missing & b]
                tok = sum((n_chars + n) // CHARS_PER_TOKEN for _, n in chosen)
                out.append(MissingRow(model_id, name, sample_id, tuple(pid for pid, _ in chosen), tok))
    return out


@dataclass
class _Chunk:
    model_id: int
    prompt_ids: tuple[int, ...]
    sample_ids: list[int] = field(default_factory=list)
    est_tokens: int = 0


def _chunks(rows: list[MissingRow], max_tokens: int, max_samples: int) -> Iterator[_Chunk]:
    """Token-balanced chunks of samples sharing the same missing prompts, per model version."""
    rows.sort(key=lambda r: (r.model_id, r.prompt_ids, r.sample_id))
    current: _Chunk | None = None
    for r in rows:
        if current is None or (current.model_id, current.prompt_ids) != (r.model_id, r.prompt_ids):
            if current is not None:
                yield current
            current = _Chunk(r.model_id, r.prompt_ids)
        elif current.est_tokens + r.est_tokens > max_tokens or len(current.sample_ids) >= max_samples:
            yield current
            current = _Chunk(r.model_id, r.prompt_ids)
        current.sample_ids.append(r.sample_id)
        current.est_tokens += r.est_tokens
    if current is not None:
        yield current


def _lock_planner(session: Session) -> None:
    # Two planners (beat + `selectit plan`) must not both see the same cells as missing.
    # SQLite: the transaction already holds the write lock (BEGIN IMMEDIATE).
    if db.is_postgres(session.bind):
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": PLAN_LOCK_KEY})


def plan(engine: Engine, *, dataset: str | None = None, model: str | None = None,
         prompt_set: str | None = None, max_tokens_per_job: int | None = None,
         max_samples_per_job: int = MAX_SAMPLES_PER_JOB, strict: bool = True) -> list[int]:
    """Create jobs for every missing cell not already in an open job; commit; return their ids.

    Idempotent: planning twice never puts a cell in two open jobs.
    """
    with db.session_scope(engine) as session:
        _lock_planner(session)
        scope = resolve_scope(session, dataset=dataset, model=model, prompt_set=prompt_set, strict=strict)
        rows = missing_cells(session, scope=scope, exclude_open=True)
        chunks = list(_chunks(rows, max_tokens_per_job or job_tokens(), max_samples_per_job))
        if not chunks:
            return []
        now = utcnow()
        ids = list(session.scalars(
            sa.insert(Job).returning(Job.id, sort_by_parameter_order=True),
            [{"model_id": c.model_id, "sample_ids": c.sample_ids, "prompt_ids": list(c.prompt_ids),
              "n_cells": len(c.sample_ids) * len(c.prompt_ids), "est_tokens": c.est_tokens,
              "status": "queued", "attempts": 0, "created_at": now} for c in chunks]))
        _insert_members(session, ids, chunks)
    return ids


def _insert_members(session: Session, ids: list[int], chunks: list[_Chunk]) -> None:
    prompts = [{"job_id": j, "prompt_id": p} for j, c in zip(ids, chunks) for p in c.prompt_ids]
    session.execute(sa.insert(JobPrompt), prompts)
    if db.is_postgres(session.bind):
        # COPY: millions of membership rows in seconds (1M samples × 2 models).
        raw = session.connection().connection.driver_connection
        with raw.cursor() as cur, cur.copy("COPY job_samples (job_id, sample_id) FROM STDIN") as copy:
            for j, c in zip(ids, chunks):
                for s in c.sample_ids:
                    copy.write_row((j, s))
    else:
        session.execute(sa.insert(JobSample),
                        [{"job_id": j, "sample_id": s} for j, c in zip(ids, chunks) for s in c.sample_ids])


# --------------------------------------------------------------------------------------------
# Leases
# --------------------------------------------------------------------------------------------


def claim(engine: Engine, job_id: int, worker: str, *, lease: float | None = None) -> bool:
    """Take the queued job `job_id` for `worker` with a lease; False if someone else has it."""
    lease = lease_seconds() if lease is None else lease
    with db.session_scope(engine) as session:
        q = sa.select(Job.id).where(Job.id == job_id, Job.status == "queued")
        if db.is_postgres(session.bind):
            q = q.with_for_update(skip_locked=True)
        if session.scalar(q) is None:
            return False
        now = utcnow()
        res = session.execute(
            sa.update(Job).where(Job.id == job_id, Job.status == "queued").values(
                status="running", worker=worker, attempts=Job.attempts + 1, started_at=now,
                lease_expires_at=now + dt.timedelta(seconds=lease), error=None))
        return res.rowcount == 1


def heartbeat(session: Session, job_id: int, worker: str, lease: float | None = None) -> bool:
    """Renew the lease; False if the job is no longer this worker's (it expired and was taken)."""
    lease = lease_seconds() if lease is None else lease
    res = session.execute(
        sa.update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == "running")
        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease)))
    return res.rowcount == 1


def release(engine: Engine, job_id: int, worker: str, *, error: str | None = None,
            count_attempt: bool = True) -> str:
    """Give a running job back: `queued` again, or `failed` once it used up its attempts.

    `count_attempt=False` (Ctrl-C) does not charge the interrupted claim. Returns the new status.
    """
    with db.session_scope(engine) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None or job.status != "running" or job.worker != worker:
            return job.status if job is not None else "missing"
        if not count_attempt:
            job.attempts = max(0, job.attempts - 1)
        return _requeue_or_fail(session, job, error)


def _requeue_or_fail(session: Session, job: Job, error: str | None) -> str:
    if job.attempts >= max_job_attempts():
        job.status = "failed"
        job.error = f"{error or 'failed'} (gave up after {job.attempts} attempts)"
        job.finished_at = utcnow()
        # Its unscored cells become failed cells: later plans retry each up to its own limit.
        cells = _cells_to_score(session, job)
        _write_results(session, job.model_id, [_failed(s, p, job.error) for s, ps in cells.items() for p in ps],
                       job.worker)
        session.execute(sa.delete(JobSample).where(JobSample.job_id == job.id))
    else:
        job.status = "queued"
        job.error = error
    job.worker = None
    job.lease_expires_at = None
    return job.status


def requeue_expired(engine: Engine) -> list[int]:
    """Running jobs whose lease expired (or whose holder on this host is dead) → queued or failed.

    Returns the ids put back in the queue (the caller re-sends them to the broker).
    """
    now = utcnow()
    requeued = []
    with db.session_scope(engine) as session:
        holders = list(session.scalars(sa.select(Job.worker).where(Job.status == "running").distinct()))
        dead = dead_local_workers(holders)
        q = sa.select(Job).where(Job.status == "running",
                                 sa.or_(Job.lease_expires_at < now, Job.worker.in_(dead) if dead else sa.false()))
        if db.is_postgres(session.bind):
            q = q.with_for_update(skip_locked=True)
        for job in session.scalars(q).all():
            why = f"worker {job.worker} died" if job.worker in dead else f"lease of {job.worker} expired"
            if _requeue_or_fail(session, job, why) == "queued":
                requeued.append(job.id)
    return requeued


# --------------------------------------------------------------------------------------------
# Running a job
# --------------------------------------------------------------------------------------------


@dataclass
class JobOutcome:
    job_id: int
    status: str  # done | skipped (not claimable) | lost (lease taken over) | retry | failed
    scored: int = 0  # ok cells written
    failed: int = 0  # failed cells written
    error: str | None = None


def _failed(sample_id: int, prompt_id: int, error: str) -> Any:
    from types import SimpleNamespace

    return SimpleNamespace(sample_id=sample_id, prompt_id=prompt_id, probs=None, mass=None, n_tokens=0,
                           truncated=False, error=error)


def _cells_to_score(session: Session, job: Job) -> dict[int, list[int]]:
    """{sample_id: [prompt_id, …]} of the job's cells not scored ok nor failed at the limit."""
    done = set(session.execute(
        sa.select(Score.sample_id, Score.prompt_id)
        .join(JobSample, sa.and_(JobSample.job_id == job.id, JobSample.sample_id == Score.sample_id))
        .where(Score.model_id == job.model_id, Score.prompt_id.in_(job.prompt_ids),
               sa.or_(Score.status == "ok", Score.attempts >= max_cell_attempts()))).all())
    cells: dict[int, list[int]] = {}
    for s in job.sample_ids:
        missing = [p for p in job.prompt_ids if (s, p) not in done]
        if missing:
            cells[s] = missing
    return cells


def _write_results(session: Session, model_id: int, results: Sequence[Any], worker: str | None) -> None:
    """Insert-or-ignore; a stored *failed* cell is overwritten in place with attempts + 1."""
    if not results:
        return
    now = utcnow()
    rows = []
    for r in results:
        probs = list(r.probs or ())
        row = {"sample_id": r.sample_id, "model_id": model_id, "prompt_id": r.prompt_id,
               "mass": r.mass, "n_tokens": r.n_tokens, "truncated": bool(r.truncated),
               "status": "failed" if r.error or r.probs is None else "ok",
               "error": (r.error or "no probabilities")[:2000] if (r.error or r.probs is None) else None,
               "attempts": 1, "scored_at": now, "worker": worker}
        for k in range(1, 10):
            row[f"p{k}"] = probs[k - 1] if k <= len(probs) else None
        rows.append(row)
    if db.is_postgres(session.bind):
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(Score)
    keep = ("sample_id", "model_id", "prompt_id", "attempts")
    stmt = stmt.on_conflict_do_update(
        index_elements=["sample_id", "model_id", "prompt_id"],
        set_={**{c: stmt.excluded[c] for c in rows[0] if c not in keep}, "attempts": Score.attempts + 1},
        where=Score.status == "failed")
    session.execute(stmt, rows)


def _requests(session: Session, cells: dict[int, list[int]], prompts: dict[int, Prompt]) -> list[Any]:
    from selectit.registry import render
    from selectit.scorer import RatingRequest

    samples = {s.id: s for s in session.scalars(sa.select(Sample).where(Sample.id.in_(list(cells))))}
    requests = []
    for sid, pids in cells.items():
        s = samples[sid]
        # One request per (layout, scale): a request's prompts share both.
        groups: dict[tuple[str, int], list[int]] = {}
        for p in pids:
            groups.setdefault((prompts[p].layout, prompts[p].scale), []).append(p)
        for (layout, scale), group in groups.items():
            rendered = tuple(render(layout, prompts[p].template, s.instruction, s.input, s.output) for p in group)
            requests.append(RatingRequest(sample_id=sid, prompt_ids=tuple(group), prompts=rendered, scale=scale))
    return requests


def _score_batch(scorer: Scorer, requests: list[Any]) -> list[Any]:
    """Score a batch; if the whole batch raises, isolate the requests that fail on their own."""
    try:
        return list(scorer.score(requests))
    except Exception:  # noqa: BLE001 - one bad sample must not sink its neighbours
        pass
    results: list[Any] = []
    for req in requests:
        try:
            results.extend(scorer.score([req]))
        except Exception as exc:  # noqa: BLE001
            err = f"{type(exc).__name__}: {exc}"
            results.extend(_failed(req.sample_id, p, err) for p in req.prompt_ids)
    return results


def run_job(engine: Engine, job_id: int, scorer_for: Callable[[LLM], Scorer], worker: str, *,
            batch_size: int | None = None, on_cells: Callable[[int, int], None] | None = None,
            lease: float | None = None) -> JobOutcome:
    """Claim job `job_id`, score its still-missing cells in committed batches, mark it done.

    `scorer_for(model)` gives the (cached) scorer of a model version; it is called before the
    claim, so a slow model load does not eat the lease. `on_cells(ok, failed)` is called after
    each committed batch. Safe to call for a job that is done or held by another worker: it
    returns status 'skipped' and scores nothing.
    """
    with db.session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != "queued":
            return JobOutcome(job_id, "skipped")
        model = session.get(LLM, job.model_id)
    try:
        scorer = scorer_for(model)
    except Exception as exc:  # noqa: BLE001 - recorded on the job, retried up to its limit
        if claim(engine, job_id, worker, lease=lease):
            status = release(engine, job_id, worker, error=f"loading model {model.name}: {type(exc).__name__}: {exc}")
            return JobOutcome(job_id, "failed" if status == "failed" else "retry", error=str(exc))
        return JobOutcome(job_id, "skipped")
    if not claim(engine, job_id, worker, lease=lease):
        return JobOutcome(job_id, "skipped")
    outcome = JobOutcome(job_id, "done")
    try:
        with db.session_scope(engine) as session:
            job = session.get(Job, job_id)
            cells = _cells_to_score(session, job)
            prompts = {p.id: p for p in session.scalars(sa.select(Prompt).where(Prompt.id.in_(job.prompt_ids)))}
        sample_ids = list(cells)
        batch_size = batch_size or default_batch_size()
        for start in range(0, len(sample_ids), batch_size):
            batch = {s: cells[s] for s in sample_ids[start:start + batch_size]}
            with db.session_scope(engine) as session:
                requests = _requests(session, batch, prompts)
            results = _score_batch(scorer, requests)
            with db.session_scope(engine) as session:
                _write_results(session, job.model_id, results, worker)
                still_ours = heartbeat(session, job_id, worker, lease)
            n_failed = sum(1 for r in results if r.error or r.probs is None)
            outcome.scored += len(results) - n_failed
            outcome.failed += n_failed
            if on_cells:
                on_cells(len(results) - n_failed, n_failed)
            if not still_ours:
                outcome.status = "lost"
                return outcome
        with db.session_scope(engine) as session:
            res = session.execute(sa.update(Job).where(Job.id == job_id, Job.worker == worker,
                                                       Job.status == "running")
                                  .values(status="done", finished_at=utcnow(), lease_expires_at=None))
            if res.rowcount == 1:
                session.execute(sa.delete(JobSample).where(JobSample.job_id == job_id))
            else:
                outcome.status = "lost"
    except KeyboardInterrupt:
        release(engine, job_id, worker, error="interrupted", count_attempt=False)
        raise
    except Exception as exc:  # noqa: BLE001 - the job goes back to the queue (bounded)
        status = release(engine, job_id, worker, error=f"{type(exc).__name__}: {exc}")
        outcome.status = "failed" if status == "failed" else "retry"
        outcome.error = f"{type(exc).__name__}: {exc}"
    return outcome


SCORER_ENV = "SELECTIT_SCORER"


def default_scorer_factory() -> Callable[[LLM], Scorer]:
    """`$SELECTIT_SCORER` (`module:callable`, model version → Scorer), else `load_scorer`.

    The hook lets a deployment plug in another scoring backend (and the tests inject faults);
    `selectit score` and the Celery workers both go through it.
    """
    import importlib

    spec = os.environ.get(SCORER_ENV) or "selectit.scorer:load_scorer"
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr or "load_scorer")
    except (ImportError, AttributeError) as exc:
        raise JobError(f"${SCORER_ENV}={spec!r} cannot be loaded ({exc}); set it to module:function "
                       "or unset it to use selectit's own scorer.") from exc


class ScorerCache:
    """`scorer_for` that loads each model version once per process (by model id)."""

    def __init__(self, load: Callable[[LLM], Scorer] | None = None) -> None:
        self._load = load
        self.scorers: dict[int, Scorer] = {}

    def __call__(self, model: LLM) -> Scorer:
        if model.id not in self.scorers:
            if self._load is None:
                self._load = default_scorer_factory()
            self.scorers[model.id] = self._load(model)
        return self.scorers[model.id]

    @property
    def forwards(self) -> int:
        return sum(getattr(s, "forwards", 0) for s in self.scorers.values())


# --------------------------------------------------------------------------------------------
# In-process scoring (`selectit score`)
# --------------------------------------------------------------------------------------------


@dataclass
class ScoreSummary:
    scored: int = 0  # ok cells written by this run
    failed: int = 0  # failed cells written by this run
    skipped: int = 0  # cells in scope already scored (or failed at the attempt limit) before the run
    jobs: int = 0  # jobs this run completed
    forwards: int = 0
    interrupted: bool = False


def _total_cells(session: Session, scope: Scope) -> int:
    ds = f"WHERE dataset_id IN ({_ids(scope.dataset_ids)})" if scope.dataset_ids is not None else ""
    n = session.scalar(sa.text(f"SELECT COUNT(DISTINCT sample_id) FROM dataset_samples {ds}")) or 0
    return n * len(scope.model_ids) * len(scope.prompt_ids)


def _open_jobs_in_scope(session: Session, scope: Scope) -> list[tuple[int, str, int]]:
    """(id, status, n_cells) of open jobs whose cells lie in the scope."""
    q = sa.select(Job.id, Job.status, Job.n_cells, Job.prompt_ids).where(
        Job.status.in_(OPEN), Job.model_id.in_(scope.model_ids)).order_by(Job.id)
    if scope.dataset_ids is not None:
        q = q.where(sa.exists().where(JobSample.job_id == Job.id, DatasetSample.sample_id == JobSample.sample_id,
                                      DatasetSample.dataset_id.in_(scope.dataset_ids)))
    prompts = set(scope.prompt_ids)
    return [(j, s, n) for j, s, n, pids in session.execute(q) if set(pids) <= prompts]


def score_in_process(engine: Engine, *, dataset: str | None = None, model: str | None = None,
                     prompt_set: str | None = None, progress: bool = True,
                     batch_size: int = DEFAULT_BATCH_SIZE, scorer_for: Callable[[LLM], Scorer] | None = None,
                     worker: str | None = None, poll: float = 1.0) -> ScoreSummary:
    """Plan the missing cells of the scope and run the jobs here, through `run_job`.

    Jobs left `running` by a killed run on this host are taken over at once (their `host:pid`
    is dead); jobs held by live workers elsewhere are waited for, and taken over if their lease
    expires. Ctrl-C puts the current job back in the queue and returns with `interrupted`.
    """
    worker = worker or worker_id()
    cache = scorer_for if scorer_for is not None else ScorerCache()
    summary = ScoreSummary()
    with db.session_scope(engine) as session:
        scope = resolve_scope(session, dataset=dataset, model=model, prompt_set=prompt_set)
        n_missing = sum(len(r.prompt_ids) for r in missing_cells(session, scope=scope))
        summary.skipped = _total_cells(session, scope) - n_missing
    requeue_expired(engine)
    plan(engine, dataset=dataset, model=model, prompt_set=prompt_set)
    bar = _Progress(n_missing, enabled=progress)

    def on_cells(ok: int, failed: int) -> None:
        summary.scored += ok
        summary.failed += failed
        bar.advance(ok + failed)

    try:
        with bar:
            tried: set[int] = set()
            while True:
                with db.session_scope(engine) as session:
                    open_jobs = _open_jobs_in_scope(session, scope)
                todo = [j for j, status, _ in open_jobs if status == "queued" and j not in tried]
                if not todo:
                    if not any(status == "running" for _, status, _ in open_jobs):
                        break
                    bar.note(f"waiting for {sum(1 for o in open_jobs if o[1] == 'running')} job(s) "
                             "held by other workers")
                    time.sleep(poll)
                    if requeue_expired(engine):
                        tried.clear()
                    continue
                for job_id in todo:
                    tried.add(job_id)
                    out = run_job(engine, job_id, cache, worker, batch_size=batch_size, on_cells=on_cells)
                    if out.status == "done":
                        summary.jobs += 1
                    elif out.status == "retry":
                        tried.discard(job_id)  # give it its next attempt in this run
                    elif out.status == "failed" and out.error:
                        bar.note(f"job {job_id} failed: {out.error}")
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.forwards = getattr(cache, "forwards", 0)
    return summary


class _Progress:
    """A rich progress bar (cells, cells/s, ETA), or nothing."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.enabled = enabled and total > 0
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn,
                                       TextColumn, TimeRemainingColumn)

            self._p = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                               TextColumn("{task.fields[rate]} cells/s"), TimeRemainingColumn(), transient=False)
            self._task = self._p.add_task("scoring", total=total, rate="–")
            self._t0 = time.monotonic()
            self._done = 0

    def __enter__(self) -> _Progress:
        if self.enabled:
            self._p.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self._p.stop()

    def advance(self, n: int) -> None:
        if self.enabled:
            self._done += n
            rate = self._done / max(time.monotonic() - self._t0, 1e-9)
            self._p.update(self._task, advance=n, rate=f"{rate:.1f}")

    def note(self, text: str) -> None:
        if self.enabled:
            self._p.console.print(text)


# --------------------------------------------------------------------------------------------
# Status
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StatusRow:
    model: str
    model_id: int
    prompt_set: str
    done: int
    missing: int
    failed: int
    queued: int
    running: int
    expired: int
    failed_jobs: int
    cells_per_min: float  # ok cells scored in the last `window` seconds, per minute


def status_rows(engine: Engine, *, window: float = 600.0) -> list[StatusRow]:
    """Per active model version × active prompt set: cells and jobs, and recent throughput."""
    now = utcnow()
    since = now - dt.timedelta(seconds=window)
    with db.session_scope(engine) as session:
        n_samples = session.scalar(sa.select(sa.func.count(sa.distinct(DatasetSample.sample_id)))) or 0
        models = session.execute(sa.select(LLM.id, LLM.name).where(LLM.active.is_(True)).order_by(LLM.name)).all()
        sets = dict(session.execute(sa.select(Prompt.set_name, sa.func.count()).where(Prompt.active.is_(True))
                                    .group_by(Prompt.set_name)).all())
        cell_counts = {(m, s, st): (n, recent) for m, s, st, n, recent in session.execute(
            sa.select(Score.model_id, Prompt.set_name, Score.status, sa.func.count(),
                      sa.func.sum(sa.case((Score.scored_at >= since, 1), else_=0)))
            .join(Prompt, Prompt.id == Score.prompt_id).where(Prompt.active.is_(True))
            .group_by(Score.model_id, Prompt.set_name, Score.status))}
        # A job's prompt set: that of its first prompt (a job never spans sets).
        first_prompt = (sa.select(JobPrompt.job_id, sa.func.min(JobPrompt.prompt_id).label("pid"))
                        .group_by(JobPrompt.job_id).subquery())
        state = sa.case((sa.and_(Job.status == "running", Job.lease_expires_at < now), "expired"), else_=Job.status)
        per_job = (sa.select(Job.model_id, Prompt.set_name, state.label("state"))
                   .join(first_prompt, first_prompt.c.job_id == Job.id).join(Prompt, Prompt.id == first_prompt.c.pid)
                   .where(Job.status.in_(("queued", "running", "failed"))).subquery())
        job_counts = {(m, s, st): n for m, s, st, n in session.execute(
            sa.select(per_job.c.model_id, per_job.c.set_name, per_job.c.state, sa.func.count())
            .group_by(per_job.c.model_id, per_job.c.set_name, per_job.c.state))}
    rows = []
    for mid, name in models:
        for set_name, k in sorted(sets.items()):
            done, recent = cell_counts.get((mid, set_name, "ok"), (0, 0))
            failed, _ = cell_counts.get((mid, set_name, "failed"), (0, 0))
            rows.append(StatusRow(
                name, mid, set_name, done, max(0, n_samples * k - done - failed), failed,
                job_counts.get((mid, set_name, "queued"), 0), job_counts.get((mid, set_name, "running"), 0),
                job_counts.get((mid, set_name, "expired"), 0), job_counts.get((mid, set_name, "failed"), 0),
                round((recent or 0) * 60.0 / window, 1)))
    return rows
