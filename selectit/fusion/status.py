"""Scoring status: cells and jobs per active model version × active prompt set, progress and
ETA per model version, and throughput — of every dataset, or of one (`selectit status --dataset`).

Cell counts come from the fusion's one coverage computation (`selectit.fusion.coverage`, the
rule of `rank` and `report` too): a cell counts *done* iff its score row has status `ok`,
*failed* iff `failed`; every other cell of the scope is *missing*. A running job is *stalled*
when its holder is gone: its lease expired, or its `host:pid` is a dead process on this host.
Rates count the ok cells scored in the last minute and the last ten minutes (`scores.scored_at`,
indexed); a model version's ETA is its missing cells at the last ten minutes' rate. That rate is
over the part of the ten minutes that scoring covered (from its first cell in them, at least a
minute): a run that started two minutes ago is not taken for five times slower than it is.

    >>> for row in status_rows(engine, dataset="alpaca"): print(row.model, row.missing)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from selectit.contract import CellStatus, JobStatus
from selectit.store import db, lookups
from selectit.store.holders import dead_local_workers
from selectit.store.schema import ControlTick, DatasetSample, Job, JobPrompt, JobSample, Prompt, Score, utcnow

#: A running job whose holder is gone (lease expired, or a dead process on this host); the
#: fleet's `requeue_expired` takes it back.
STALLED = "stalled"
#: The windows of the recent rates, in seconds.
LAST_MINUTE = 60.0
LAST_TEN_MINUTES = 600.0


@dataclass(frozen=True)
class StatusRow:
    model: str
    model_id: int
    prompt_set: str
    done: int
    missing: int
    failed: int
    queued: int
    running: int  # running jobs whose holder is alive as far as can be told
    stalled: int  # running jobs whose holder is gone
    failed_jobs: int
    cells_per_min: float  # ok cells scored in the last ten minutes, per minute
    by_engine: tuple[tuple[str, int], ...] = ()  # ok cells per engine (`unknown`: stored before provenance)
    cells_per_min_1m: float = 0.0  # ok cells scored in the last minute, per minute
    recent: int = 0  # ok cells scored in the last ten minutes
    recent_1m: int = 0  # … in the last minute
    #: seconds of the ten minutes that `recent` covers: since its first cell, at least a minute
    span: float = LAST_TEN_MINUTES
    #: of `missing`, the cells of conversations' turns before the last (`score --turns last` leaves them)
    missing_earlier: int = 0


@dataclass(frozen=True)
class ModelProgress:
    """One model version over the active prompt sets of the scope: cells, rates and ETA."""

    model: str
    model_id: int
    done: int
    missing: int
    failed: int
    cells_per_min_1m: float
    cells_per_min: float  # over the last ten minutes
    #: missing cells ÷ the last ten minutes' rate; 0 when none is missing, None when no cell was
    #: scored in the last ten minutes
    eta_seconds: float | None
    eta: str = "–"  # eta_seconds as text (`Store.status` fills it)
    time_left: str = "–"  # at the rate of the model's last finished jobs (`Store.status` fills it)


def model_progress(rows: Iterable[StatusRow], window: float = LAST_TEN_MINUTES,
                   short_window: float = LAST_MINUTE) -> list[ModelProgress]:
    """The rows of each model version added up over its prompt sets, with its ETA."""
    by_model: dict[int, list[StatusRow]] = {}
    for r in rows:
        by_model.setdefault(r.model_id, []).append(r)
    out = []
    for model_id, mine in by_model.items():
        missing, recent, recent_1m = (sum(r.missing for r in mine), sum(r.recent for r in mine),
                                      sum(r.recent_1m for r in mine))
        span = max((r.span for r in mine if r.recent), default=window)
        eta = 0.0 if not missing else (missing * span / recent if recent else None)
        out.append(ModelProgress(mine[0].model, model_id, sum(r.done for r in mine), missing,
                                 sum(r.failed for r in mine), round(recent_1m * 60.0 / short_window, 1),
                                 round(recent * 60.0 / span, 1), eta))
    return out


def status_rows(engine: Engine, *, dataset: str | None = None, window: float = LAST_TEN_MINUTES,
                short_window: float = LAST_MINUTE) -> list[StatusRow]:
    """Per active model version × active prompt set: cells and jobs, and recent throughput —
    over the samples of `dataset` (default: every dataset; an unknown name is `NoSuchDataset`)."""
    # DuckDB: only when the status is asked for
    from selectit.fusion.coverage import store_coverage

    now = utcnow()
    since, short_since = now - dt.timedelta(seconds=window), now - dt.timedelta(seconds=short_window)
    with db.read_scope(engine) as session:
        ds = lookups.dataset_id(session, dataset) if dataset is not None else None
    cells = store_coverage(engine.url.render_as_string(hide_password=False), dataset)
    with db.read_scope(engine) as session:
        recent = {(m, s): (n, n1, _span(first, now, window, short_window))
                  for m, s, n, n1, first in session.execute(recent_cells(since, short_since, ds))}
        per_engine: dict[tuple[int, str], list[tuple[str, int]]] = {}
        for m, s, eng, n in session.execute(_of_dataset(
                sa.select(Score.model_id, Prompt.set_name, Score.engine, sa.func.count())
                .join(Prompt, Prompt.id == Score.prompt_id)
                .where(Prompt.active.is_(True), Score.status == CellStatus.OK), ds)
                .group_by(Score.model_id, Prompt.set_name, Score.engine)):
            per_engine.setdefault((m, s), []).append((eng or "unknown", n))
        job_counts = _job_counts(session, now, ds)
    rows = []
    for c in cells:  # by model name, then prompt set
        def jobs(state: str, c=c) -> int:  # noqa: ANN001 - the loop's coverage row
            return job_counts.get((c.model_id, c.prompt_set, state), 0)

        n, n1, span = recent.get((c.model_id, c.prompt_set), (0, 0, window))
        rows.append(StatusRow(
            c.model, c.model_id, c.prompt_set, c.ok, c.missing, c.failed,
            jobs(JobStatus.QUEUED), jobs(JobStatus.RUNNING), jobs(STALLED), jobs(JobStatus.FAILED),
            round(n * 60.0 / span, 1), tuple(sorted(per_engine.get((c.model_id, c.prompt_set), ()))),
            round(n1 * 60.0 / short_window, 1), n, n1, span, c.missing_earlier))
    return rows


def _of_dataset(q: sa.Select, dataset_id: int | None) -> sa.Select:
    """`q` over the score cells of the dataset's samples only (all cells when `dataset_id` is None)."""
    if dataset_id is None:
        return q
    return q.join(DatasetSample, sa.and_(DatasetSample.sample_id == Score.sample_id,
                                         DatasetSample.dataset_id == dataset_id))


def _span(first: dt.datetime, now: dt.datetime, window: float, short_window: float) -> float:
    """Seconds of the window that scoring covered: from its first cell in it to now, at least
    `short_window` (a few cells a moment ago are no rate), at most `window`."""
    return min(window, max(short_window, (now - first).total_seconds()))


def recent_cells(since: dt.datetime, short_since: dt.datetime, dataset_id: int | None = None) -> sa.Select:
    """(model id, prompt set, ok cells scored since `since`, … since `short_since`, the first
    one's time) of the active prompts: a range of the index `ix_scores_status_scored_at`, not a
    scan of every score."""
    return (_of_dataset(
        sa.select(Score.model_id, Prompt.set_name, sa.func.count(),
                  sa.func.count().filter(Score.scored_at >= short_since), sa.func.min(Score.scored_at))
        .join(Prompt, Prompt.id == Score.prompt_id)
        .where(Prompt.active.is_(True), Score.status == CellStatus.OK, Score.scored_at >= since), dataset_id)
        .group_by(Score.model_id, Prompt.set_name))


def _job_counts(session: sa.orm.Session, now: dt.datetime, dataset_id: int | None) -> dict[tuple[int, str, str], int]:
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
