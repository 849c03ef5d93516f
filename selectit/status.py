"""Scoring status: cells and jobs per active model version × active prompt set, and throughput.

Counting rule (the same as the fusion's coverage): a cell counts *done* iff its score row has
status `ok`, *failed* iff `failed`; every other cell of the scope is *missing*.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from selectit import db
from selectit.contract import CellStatus, JobStatus
from selectit.schema import LLM, DatasetSample, Job, JobPrompt, Prompt, Score, utcnow

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
        state = sa.case((sa.and_(Job.status == JobStatus.RUNNING, Job.lease_expires_at < now), EXPIRED),
                        else_=Job.status)
        per_job = (sa.select(Job.model_id, Prompt.set_name, state.label("state"))
                   .join(first_prompt, first_prompt.c.job_id == Job.id).join(Prompt, Prompt.id == first_prompt.c.pid)
                   .where(Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.FAILED))).subquery())
        job_counts = {(m, s, st): n for m, s, st, n in session.execute(
            sa.select(per_job.c.model_id, per_job.c.set_name, per_job.c.state, sa.func.count())
            .group_by(per_job.c.model_id, per_job.c.set_name, per_job.c.state))}
    rows = []
    for mid, name in models:
        for set_name, k in sorted(sets.items()):
            done, recent = cell_counts.get((mid, set_name, CellStatus.OK), (0, 0))
            failed, _ = cell_counts.get((mid, set_name, CellStatus.FAILED), (0, 0))

            def jobs(state: str, mid: int = mid, set_name: str = set_name) -> int:
                return job_counts.get((mid, set_name, state), 0)

            rows.append(StatusRow(
                name, mid, set_name, done, max(0, n_samples * k - done - failed), failed,
                jobs(JobStatus.QUEUED), jobs(JobStatus.RUNNING), jobs(EXPIRED), jobs(JobStatus.FAILED),
                round((recent or 0) * 60.0 / window, 1)))
    return rows
