"""Counts the status is made of, from the jobs' side: jobs per state (a running job whose holder
is gone is *stalled*), ok cells scored recently, and ok cells per engine — of every dataset, or of
one dataset's samples. `selectit.status` puts them beside the fusion's coverage.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from selectit.contract import RENDERING, CellStatus, JobStatus
from selectit.jobs.holders import dead_local_workers
from selectit.jobs.planner import CHARS_PER_TOKEN
from selectit.store.schema import DatasetSample, Job, JobPrompt, JobSample, Prompt, Sample, Score

#: A running job whose holder is gone (lease expired, or a dead process on this host); the
#: fleet's `requeue_expired` takes it back.
STALLED = "stalled"


def _of_dataset(q: sa.Select, dataset_id: int | None) -> sa.Select:
    """`q` over the score cells of the dataset's samples only (all cells when `dataset_id` is None)."""
    if dataset_id is None:
        return q
    return q.join(DatasetSample, sa.and_(DatasetSample.sample_id == Score.sample_id,
                                         DatasetSample.dataset_id == dataset_id))


#: The characters of a score's sample (a correlated subquery: the recent cells are few).
_sample_chars = sa.select(Sample.n_chars).where(Sample.id == Score.sample_id).scalar_subquery()


def recent_cells(since: dt.datetime, short_since: dt.datetime, dataset_id: int | None = None) -> sa.Select:
    """(model id, prompt set, ok cells scored since `since`, … since `short_since`, the first
    one's time, their tokens as the planner counts them: (sample + template characters) // 4) of
    the active prompts: a range of the index `ix_scores_status_scored_at`, not a scan of every score."""
    return (_of_dataset(
        sa.select(Score.model_id, Prompt.set_name, sa.func.count(),
                  sa.func.count().filter(Score.scored_at >= short_since), sa.func.min(Score.scored_at),
                  sa.func.sum((_sample_chars + sa.func.length(Prompt.template)) // CHARS_PER_TOKEN))
        .join(Prompt, Prompt.id == Score.prompt_id)
        .where(Prompt.active.is_(True), Score.status == CellStatus.OK, Score.scored_at >= since,
               Score.rendering == RENDERING), dataset_id)
        .group_by(Score.model_id, Prompt.set_name))


def job_counts(session: sa.orm.Session, now: dt.datetime, dataset_id: int | None) -> dict[tuple[int, str, str], int]:
    """(model id, prompt set, state) → jobs: queued, running, stalled or failed — of the jobs with
    a sample of the dataset when `dataset_id` is given."""
    holders = session.scalars(sa.select(Job.worker).where(Job.status == JobStatus.RUNNING).distinct())
    dead = dead_local_workers(holders)
    gone = sa.or_(Job.lease_expires_at < now, Job.worker.in_(dead) if dead else sa.false())
    state = sa.case((sa.and_(Job.status == JobStatus.RUNNING, gone), STALLED), else_=Job.status)
    # A job's prompt set: that of its first prompt (a job never spans sets).
    first_prompt = (sa.select(JobPrompt.job_id, sa.func.min(JobPrompt.prompt_id).label("pid"))
                    .group_by(JobPrompt.job_id).subquery())
    open_states = (JobStatus.QUEUED, JobStatus.RUNNING)
    # An ended job's samples are only in its `sample_ids`: read them only when a dataset is asked for.
    ids = Job.sample_ids if dataset_id is not None else sa.null()
    q = (sa.select(Job.id, Job.model_id, Prompt.set_name, state.label("state"), ids)
         .join(first_prompt, first_prompt.c.job_id == Job.id).join(Prompt, Prompt.id == first_prompt.c.pid)
         .where(Job.status.in_((*open_states, JobStatus.FAILED))))
    if dataset_id is not None:
        of_dataset = (sa.select(JobSample.job_id).join(DatasetSample, DatasetSample.sample_id == JobSample.sample_id)
                      .where(DatasetSample.dataset_id == dataset_id))
        q = q.where(sa.or_(Job.status == JobStatus.FAILED, Job.id.in_(of_dataset)))
    counts: dict[tuple[int, str, str], int] = {}
    failed: list[tuple[tuple[int, str, str], list[int]]] = []
    for _, model_id, set_name, st, sample_ids in session.execute(q):
        key = (model_id, set_name, str(st))
        if dataset_id is not None and st == JobStatus.FAILED:
            failed.append((key, list(sample_ids or ())))
        else:
            counts[key] = counts.get(key, 0) + 1
    if failed:
        members = _members(session, dataset_id, {s for _, ids in failed for s in ids})
        for key, ids in failed:
            if members.intersection(ids):
                counts[key] = counts.get(key, 0) + 1
    return counts


def _members(session: sa.orm.Session, dataset_id: int | None, sample_ids: set[int], chunk: int = 500) -> set[int]:
    """The ids among `sample_ids` that are samples of the dataset."""
    ids, found = sorted(sample_ids), set()
    for start in range(0, len(ids), chunk):
        found.update(session.scalars(sa.select(DatasetSample.sample_id).where(
            DatasetSample.dataset_id == dataset_id, DatasetSample.sample_id.in_(ids[start:start + chunk]))))
    return found


def cells_per_engine(dataset_id: int | None = None) -> sa.Select:
    """(model id, prompt set, engine, ok cells) of the active prompts (`unknown`: stored before provenance)."""
    return (_of_dataset(
        sa.select(Score.model_id, Prompt.set_name, Score.engine, sa.func.count())
        .join(Prompt, Prompt.id == Score.prompt_id)
        .where(Prompt.active.is_(True), Score.status == CellStatus.OK, Score.rendering == RENDERING), dataset_id)
        .group_by(Score.model_id, Prompt.set_name, Score.engine))
