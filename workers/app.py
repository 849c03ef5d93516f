"""The Celery app of the worker fleet: tasks `plan`, `score_job`, `requeue_expired`, and the
control loop that runs `plan` and `requeue_expired` on schedule.

Start a GPU worker for one model with `selectit worker --model NAME` (or
`celery -A selectit.workers.app worker -Q model.NAME,control --pool solo --without-gossip --without-mingle`).
Every worker that serves the `control` queue also keeps the fleet's clock on a thread of its own
(`selectit.workers.control`): it requeues expired leases and plans new cells on schedule, whatever job
the worker is running, and one worker of the fleet does each tick. No `celery beat` is needed.
Configuration comes from the environment:

- `SELECTIT_DATABASE_URL`: the curation database (PostgreSQL for a fleet).
- `SELECTIT_BROKER_URL`: the Redis broker [redis://localhost:6379/0]; `SELECTIT_BROKER_TIMEOUT`:
  seconds to wait for it to connect or answer [10].
- `SELECTIT_PLAN_INTERVAL`: seconds between the control loop's plans (new datasets/models/prompts
  are picked up without anyone running a command) [60]; `SELECTIT_REQUEUE_INTERVAL` [30] between
  its sweeps of expired leases.
- `SELECTIT_LEASE_SECONDS`, `SELECTIT_MAX_ATTEMPTS`, `SELECTIT_MAX_JOB_ATTEMPTS`,
  `SELECTIT_BATCH_SIZE`, `SELECTIT_JOB_TOKENS`: see `selectit.settings`.
- `SELECTIT_SCORER`: `module:callable` turning a model version (LLM row) into a scoring engine
  [selectit.scoring.engines:load_engine: the torch or vLLM engine, as `SELECTIT_ENGINE` says]; the hook
  to plug in another scoring backend.

They are read once, when the worker process imports this module (`SETTINGS`).

Tasks take ids and are idempotent: a duplicate `score_job` message finds its job not queued and
does nothing; jobs are sent to the broker only after the transaction that created them committed.
A job whose message was lost (the broker restarted) is sent again by `plan`/`requeue_expired`
when its model's queue is empty.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from celery import Celery, signals

from selectit.contract import JobStatus, ModelSpec, ScoringEngine
from selectit.fusion import status
from selectit.jobs.leases import requeue_expired as requeue_expired_jobs
from selectit.jobs.leases import worker_id
from selectit.jobs.planner import plan as plan_jobs
from selectit.jobs.runner import Outcome, ScorerCache, run_job
from selectit.settings import Settings
from selectit.store import db
from selectit.store.schema import LLM, Job

from . import (
    control,  # this package: `workers` in a checkout, `selectit.workers` installed
)

log = logging.getLogger("selectit.workers")

#: This process's knobs, read once (a bad value stops the worker at start, naming the variable).
SETTINGS = Settings.from_env()
#: The queue of the cheap bookkeeping tasks (plan, requeue_expired).
CONTROL_QUEUE = "control"
#: At most this many queued jobs are re-sent per model and tick when its queue is empty.
RESEND_LIMIT = 1000


def queue_for(model_name: str) -> str:
    """The broker queue of a model (by name: every version of it goes to the same workers)."""
    return f"model.{model_name}"


app = Celery("selectit", broker=SETTINGS.broker_url)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],  # never pickle
    result_serializer="json",
    task_ignore_result=True,
    task_acks_late=True,  # a worker killed mid-task leaves its message to be redelivered
    worker_prefetch_multiplier=1,  # a job is long: never hoard messages other workers could run
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,  # a restarted Redis is waited for, not fatal
    # A broker that accepts the connection and never answers fails a send after a few tries,
    # never hangs it: every socket operation and connection attempt is bounded.
    broker_connection_timeout=SETTINGS.broker_timeout,
    broker_transport_options={"socket_timeout": SETTINGS.broker_timeout,
                              "socket_connect_timeout": SETTINGS.broker_timeout,
                              "max_retries": 2, "interval_start": 0, "interval_step": 1, "interval_max": 1},
    task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 1, "interval_max": 1},
    worker_pool="solo",  # a CUDA model cannot be forked
    worker_concurrency=1,
    task_default_queue=CONTROL_QUEUE,
    task_create_missing_queues=True,
    worker_hijack_root_logger=False,
    # No beat schedule: a control message queued behind a minutes-long job expired unseen (or
    # piled up). The periodic work runs on a thread of each control worker instead (see
    # workers/control.py), so it never waits behind a model job.
    beat_schedule={},
)

_engine: sa.Engine | None = None
_engine_pid: int | None = None
_engine_lock = threading.Lock()  # the control thread and the task thread share one engine
_scorers: ScorerCache | None = None


def engine() -> sa.Engine:
    """This process's engine (a forked child makes its own: connections do not survive fork)."""
    global _engine, _engine_pid
    with _engine_lock:
        if _engine is None or _engine_pid != os.getpid():
            _engine = db.open_store(None)
            _engine_pid = os.getpid()
        return _engine


def scorer_for(model: ModelSpec) -> ScoringEngine:
    """The scoring engine of a model version, loaded once per worker process."""
    global _scorers
    if _scorers is None:
        _scorers = ScorerCache(settings=SETTINGS)
    return _scorers(model)


def send_jobs(job_ids: Iterable[int], eng: sa.Engine | None = None) -> int:
    """Send `score_job` for each job id to its model's queue; returns how many were sent."""
    job_ids = list(job_ids)
    if not job_ids:
        return 0
    with db.session_scope(eng or engine()) as session:
        names = dict(session.execute(sa.select(Job.id, LLM.name).join(LLM, LLM.id == Job.model_id)
                                     .where(Job.id.in_(job_ids))).all())
    for job_id in job_ids:
        score_job.apply_async(args=[job_id], queue=queue_for(names[job_id]))
    return len(job_ids)


def queue_length(name: str) -> int:
    """Messages waiting in broker queue `name` (0 if it does not exist)."""
    with app.connection_for_write() as conn:
        try:
            return conn.default_channel.queue_declare(queue=name, passive=True).message_count
        except Exception:  # noqa: BLE001 - a queue that does not exist holds nothing
            return 0


def resend_lost(eng: sa.Engine | None = None) -> int:
    """Queued jobs of a model whose broker queue is empty lost their message: send them again.

    A duplicate is harmless (`score_job` of a job that is not queued does nothing).
    """
    eng = eng or engine()
    with db.session_scope(eng) as session:
        by_model = session.execute(sa.select(LLM.name, sa.func.count()).join(Job, Job.model_id == LLM.id)
                                   .where(Job.status == JobStatus.QUEUED).group_by(LLM.name)).all()
    sent = 0
    for name, _n in by_model:
        if queue_length(queue_for(name)) == 0:
            with db.session_scope(eng) as session:
                ids = list(session.scalars(sa.select(Job.id).join(LLM, LLM.id == Job.model_id)
                                           .where(Job.status == JobStatus.QUEUED, LLM.name == name)
                                           .order_by(Job.id).limit(RESEND_LIMIT)))
            sent += send_jobs(ids, eng)
    return sent


@signals.worker_shutdown.connect
def close_scorers(**_: Any) -> None:
    """Close the loaded engines as the worker stops: an open vLLM engine process would keep the
    worker from exiting."""
    if _scorers is not None:
        _scorers.close()


@app.task(name="selectit.plan")
def plan(dataset: str | None = None, model: str | None = None, prompt_set: str | None = None) -> dict[str, int]:
    """Plan the missing cells into jobs and enqueue them (after the commit); resend lost ones."""
    ids = plan_jobs(engine(), dataset=dataset, model=model, prompt_set=prompt_set, strict=False, settings=SETTINGS)
    sent = send_jobs(ids)
    resent = resend_lost()
    if ids or resent:
        log.info("planned %d job(s), re-sent %d", len(ids), resent)
    return {"planned": len(ids), "sent": sent, "resent": resent}


@app.task(name="selectit.score_job")
def score_job(job_id: int) -> dict[str, Any]:
    """Claim job `job_id`, score its missing cells, mark it done (a no-op if not queued)."""
    outcome = run_job(engine(), int(job_id), scorer_for, worker_id(), settings=SETTINGS)
    if outcome.status == Outcome.RETRY:  # put back in the queue by run_job: send it again
        send_jobs([outcome.job_id])
    log.info("job %s: %s (%d ok, %d failed)", job_id, outcome.status, outcome.scored, outcome.failed)
    return {"job_id": outcome.job_id, "status": str(outcome.status), "scored": outcome.scored, "failed": outcome.failed}


@app.task(name="selectit.requeue_expired")
def requeue_expired() -> dict[str, int]:
    """Expired leases → back in the queue (or failed after N attempts); resend lost messages."""
    ids = requeue_expired_jobs(engine(), SETTINGS)
    send_jobs(ids)
    resent = resend_lost()
    if ids or resent:
        log.info("requeued %d expired job(s), re-sent %d", len(ids), resent)
    return {"requeued": len(ids), "resent": resent}


def control_ticks() -> list[control.Tick]:
    """The fleet's periodic bookkeeping: requeue expired leases, plan new cells (each also re-sends
    the messages a broker lost)."""
    return [control.Tick("requeue-expired", SETTINGS.requeue_interval, requeue_expired),
            control.Tick("plan", SETTINGS.plan_interval, plan)]


def _control_loop_for(worker: object) -> control.ControlLoop | None:
    # The workers that serve the control queue keep the clock (`selectit worker --no-control` does not).
    if CONTROL_QUEUE not in app.amqp.queues.consume_from:
        return None
    log.info("control loop: %s", ", ".join(f"{t.name} every {t.interval:g} s" for t in control_ticks()))
    return control.ControlLoop(control_ticks(), control.RedisGate(app.conf.broker_url), record=record_tick)


def record_tick(name: str, started_at: Any, seconds: float, error: str | None) -> None:
    """Store a control tick's run in `control_ticks` (`selectit status` shows it)."""
    status.record_tick(engine(), name, worker_id(), started_at, seconds, error)


app.steps["worker"].add(control.worker_step(_control_loop_for))
