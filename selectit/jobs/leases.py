"""Leases on jobs: claim, heartbeat, release, and taking over jobs whose holder is gone.

Claiming is a guarded UPDATE (`… WHERE status = 'queued'`): on PostgreSQL the row is picked with
`FOR UPDATE SKIP LOCKED`, on SQLite every transaction is `BEGIN IMMEDIATE` (see `selectit.store.db`).
Leases that expire (a worker died) go back to `queued` through `requeue_expired`; after
`Settings.max_job_attempts` claims a job is `failed`, and its unscored cells are recorded as
failed cells, which later plans retry until each reaches `Settings.max_cell_attempts`.
"""

from __future__ import annotations

import datetime as dt
import os
import socket

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from selectit.contract import CellResult, JobStatus
from selectit.jobs.cells import cells_to_score, write_results
from selectit.settings import DEFAULT_SETTINGS, Settings
from selectit.store import db
from selectit.jobs.holders import dead_local_workers
from selectit.store.schema import Job, JobSample, utcnow


def worker_id() -> str:
    """`host:pid` of this process: lets a rerun on the same host see that a holder is dead
    (`selectit.jobs.holders`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(engine: Engine, job_id: int, worker: str, *, lease: float = DEFAULT_SETTINGS.lease_seconds) -> bool:
    """Take the queued job `job_id` for `worker` with a lease; False if someone else has it."""
    with db.session_scope(engine) as session:
        q = sa.select(Job.id).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        if session.scalar(db.skip_locked(q, session)) is None:
            return False
        return _take(session, job_id, worker, lease)


def claim_next(engine: Engine, model_id: int, worker: str, *,
               lease: float = DEFAULT_SETTINGS.lease_seconds) -> int | None:
    """Take the oldest queued job of model version `model_id` for `worker` with a lease, as `claim`
    does; its id, or None if no job of that model version is queued (or every one is being taken)."""
    with db.session_scope(engine) as session:
        q = (sa.select(Job.id).where(Job.model_id == model_id, Job.status == JobStatus.QUEUED)
             .order_by(Job.id).limit(1))
        job_id = session.scalar(db.skip_locked(q, session))
        return job_id if job_id is not None and _take(session, job_id, worker, lease) else None


def _take(session: Session, job_id: int, worker: str, lease: float) -> bool:
    """The guarded update of a claim: queued → running, held by `worker` under a lease, one attempt charged."""
    now = utcnow()
    res = session.execute(
        sa.update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED).values(
            status=str(JobStatus.RUNNING), worker=worker, attempts=Job.attempts + 1, started_at=now,
            lease_expires_at=now + dt.timedelta(seconds=lease), error=None))
    return res.rowcount == 1


def heartbeat(session: Session, job_id: int, worker: str, lease: float) -> bool:
    """Renew the lease; False if the job is no longer this worker's (it expired and was taken)."""
    res = session.execute(
        sa.update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.RUNNING)
        .values(lease_expires_at=utcnow() + dt.timedelta(seconds=lease)))
    return res.rowcount == 1


def release(engine: Engine, job_id: int, worker: str, *, error: str | None = None,
            count_attempt: bool = True, settings: Settings = DEFAULT_SETTINGS) -> JobStatus | None:
    """Give a running job back: `queued` again, or `failed` once it used up its attempts.

    `count_attempt=False` (Ctrl-C) does not charge the interrupted claim. Returns the job's
    status afterwards (None if there is no such job).
    """
    with db.session_scope(engine) as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            return None
        if job.status != JobStatus.RUNNING or job.worker != worker:
            return JobStatus(job.status)
        if not count_attempt:
            job.attempts = max(0, job.attempts - 1)
        return _requeue_or_fail(session, job, error, settings)


def _requeue_or_fail(session: Session, job: Job, error: str | None, settings: Settings) -> JobStatus:
    if job.attempts >= settings.max_job_attempts:
        job.status = str(JobStatus.FAILED)
        job.error = f"{error or 'failed'} (gave up after {job.attempts} attempts)"
        job.finished_at = utcnow()
        # Its unscored cells become failed cells: later plans retry each up to its own limit.
        cells = cells_to_score(session, job, settings.max_cell_attempts)
        write_results(session, job.model_id,
                      [CellResult.failed(s, p, job.error, turn=t) for (s, t), ps in cells.items() for p in ps], job.worker)
        session.execute(sa.delete(JobSample).where(JobSample.job_id == job.id))
    else:
        job.status = str(JobStatus.QUEUED)
        job.error = error
    job.worker = None
    job.lease_expires_at = None
    return JobStatus(job.status)


def requeue_expired(engine: Engine, settings: Settings = DEFAULT_SETTINGS) -> list[int]:
    """Running jobs whose lease expired (or whose holder on this host is dead) → queued or failed.

    Returns the ids put back in the queue (the caller re-sends them to the broker).
    """
    now = utcnow()
    requeued = []
    with db.session_scope(engine) as session:
        holders = list(session.scalars(sa.select(Job.worker).where(Job.status == JobStatus.RUNNING).distinct()))
        dead = dead_local_workers(holders)
        q = sa.select(Job).where(Job.status == JobStatus.RUNNING,
                                 sa.or_(Job.lease_expires_at < now, Job.worker.in_(dead) if dead else sa.false()))
        for job in session.scalars(db.skip_locked(q, session)).all():
            why = f"worker {job.worker} died" if job.worker in dead else f"lease of {job.worker} expired"
            if _requeue_or_fail(session, job, why, settings) == JobStatus.QUEUED:
                requeued.append(job.id)
    return requeued
