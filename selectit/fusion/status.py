"""Scoring status: cells and jobs per active model version × active prompt set, and throughput.

Cell counts come from the fusion's one coverage computation (`selectit.fusion.views.scoring_coverage`,
the rule of `rank` and `report` too): a cell counts *done* iff its score row has status `ok`,
*failed* iff `failed`; every other cell of the scope is *missing*.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from selectit.contract import CellStatus, JobStatus
from selectit.store import db
from selectit.store.schema import ControlTick, Job, JobPrompt, Prompt, Score, utcnow

#: A running job whose lease is over (its holder is likely gone; `requeue_expired` takes it back).
EXPIRED = "expired"


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
    by_engine: tuple[tuple[str, int], ...] = ()  # ok cells per engine (`unknown`: stored before provenance)


def status_rows(engine: Engine, *, window: float = 600.0) -> list[StatusRow]:
    """Per active model version × active prompt set: cells and jobs, and recent throughput."""
    # DuckDB: only when the status is asked for
    from selectit.fusion import views as fusion

    now = utcnow()
    since = now - dt.timedelta(seconds=window)
    cells = fusion.store_coverage(engine.url.render_as_string(hide_password=False))
    with db.read_scope(engine) as session:
        recent = {(m, s): n for m, s, n in session.execute(
            sa.select(Score.model_id, Prompt.set_name, sa.func.count())
            .join(Prompt, Prompt.id == Score.prompt_id)
            .where(Prompt.active.is_(True), Score.status == CellStatus.OK, Score.scored_at >= since)
            .group_by(Score.model_id, Prompt.set_name))}
        per_engine: dict[tuple[int, str], list[tuple[str, int]]] = {}
        for m, s, eng, n in session.execute(
                sa.select(Score.model_id, Prompt.set_name, Score.engine, sa.func.count())
                .join(Prompt, Prompt.id == Score.prompt_id)
                .where(Prompt.active.is_(True), Score.status == CellStatus.OK)
                .group_by(Score.model_id, Prompt.set_name, Score.engine)):
            per_engine.setdefault((m, s), []).append((eng or "unknown", n))
        # A job's prompt set: that of its first prompt (a job never spans sets).
        first_prompt = (sa.select(JobPrompt.job_id, sa.func.min(JobPrompt.prompt_id).label("pid"))
                        .group_by(JobPrompt.job_id).subquery())
        state = sa.case((sa.and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now), EXPIRED),
                        else_=Job.status)
        per_job = (sa.select(Job.model_id, Prompt.set_name, state.label("state"))
                   .join(first_prompt, first_prompt.c.job_id == Job.id).join(Prompt, Prompt.id == first_prompt.c.pid)
                   .where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED))).subquery())
        job_counts = {(m, s, st): n for m, s, st, n in session.execute(
            sa.select(per_job.c.model_id, per_job.c.set_name, per_job.c.state, sa.func.count())
            .group_by(per_job.c.model_id, per_job.c.set_name, per_job.c.state))}
    rows = []
    for c in cells:  # by model name, then prompt set
        def jobs(state: str, c: fusion.ModelCoverage = c) -> int:
            return job_counts.get((c.model_id, c.prompt_set, state), 0)

        rows.append(StatusRow(
            c.model, c.model_id, c.prompt_set, c.ok, c.missing, c.failed,
            jobs(JobStatus.QUEUED), jobs(JobStatus.RUNNING), jobs(EXPIRED), jobs(JobStatus.FAILED),
            round(recent.get((c.model_id, c.prompt_set), 0) * 60.0 / window, 1),
            tuple(sorted(per_engine.get((c.model_id, c.prompt_set), ())))))
    return rows


# --------------------------------------------------------------------------------------------
# The fleet's control ticks (`selectit.workers.control`)
# --------------------------------------------------------------------------------------------


def record_tick(engine: Engine, name: str, worker: str, started_at: dt.datetime, seconds: float,
                error: str | None) -> None:
    """Store one run of control tick `name` (its own short transaction, after the tick)."""
    values = {"worker": worker, "started_at": started_at, "seconds": seconds, "error": error}
    if error:
        values["failed_at"] = started_at
    with db.session_scope(engine) as session:
        stmt = db.upsert(session, ControlTick).values(name=name, runs=1, **values)
        session.execute(stmt.on_conflict_do_update(
            index_elements=["name"], set_={**values, "runs": ControlTick.runs + 1}))


@dataclass(frozen=True)
class TickRow:
    name: str
    worker: str
    started_at: dt.datetime
    seconds: float
    runs: int
    error: str | None
    failed_at: dt.datetime | None


def tick_rows(engine: Engine) -> list[TickRow]:
    """The last run of each control tick, by name (empty when no worker has kept the clock)."""
    with db.read_scope(engine) as session:
        return [TickRow(t.name, t.worker, t.started_at, t.seconds, t.runs, t.error, t.failed_at)
                for t in session.scalars(sa.select(ControlTick).order_by(ControlTick.name))]
