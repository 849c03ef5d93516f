"""The Celery app of the worker fleet, built by `make_app(settings)`: tasks `plan`, `score_job`,
`requeue_expired`, and the control loop that runs `plan` and `requeue_expired` on schedule.

Start a GPU worker for one model with `selectit worker --model NAME` (or
`celery -A selectit.workers.app worker -Q model.NAME,control --pool solo --without-gossip --without-mingle`).
Every worker that serves the `control` queue also keeps the fleet's clock on a thread of its own
(`selectit.workers.control`): it requeues expired leases and plans new cells on schedule, whatever job
the worker is running, and one worker of the fleet does each tick. No `celery beat` is needed.

The app is a value built from values: `make_app(settings, db_url=…, engine_options=…)` binds the
knobs (`selectit.settings.Settings`), the database and the scoring engine's options into the app
(its `fleet`), and every task reads them from there. Nothing is read from the environment when
this module is imported. `selectit worker` builds the app from its options; `celery -A
selectit.workers.app` finds the module's `app`, which is built on first use from the environment,
read once there (that command's edge):

- `SELECTIT_DATABASE_URL`: the curation database (PostgreSQL for a fleet).
- `SELECTIT_BROKER_URL`: the Redis broker [redis://localhost:6379/0]; `SELECTIT_BROKER_TIMEOUT`:
  seconds to wait for it to connect or answer [10].
- `SELECTIT_PLAN_INTERVAL`: seconds between the control loop's plans (new datasets/models/prompts
  are picked up without anyone running a command) [60]; `SELECTIT_REQUEUE_INTERVAL` [30] between
  its sweeps of expired leases.
- `SELECTIT_LEASE_SECONDS`, `SELECTIT_MAX_ATTEMPTS`, `SELECTIT_MAX_JOB_ATTEMPTS`,
  `SELECTIT_BATCH_SIZE`, `SELECTIT_JOB_TOKENS`: see `selectit.settings`.
- `SELECTIT_ENGINE` and the engine options (`selectit.scoring.engines`); `SELECTIT_SCORER`
  (deprecated: engines are registered by name) a `module:callable` turning a model version into a
  scoring engine.

Tasks take ids and are idempotent: a duplicate `score_job` message finds its job not queued and
wakes the worker for another queued job of its model version, or does nothing; a worker scores the
queued jobs of a model version back to back, each claimed and read while the one before ends
(`selectit.jobs.pipeline`). Jobs are sent to the broker only after the transaction that created
them committed.
A job whose message was lost (the broker restarted) is sent again by `plan`/`requeue_expired`
when its model's queue is empty. Each task reads what it sends in one session. A worker that cannot
load its model (a missing API key, a server that refuses or does not answer) claims nothing: the
job stays queued with no attempt charged and the error noted on it, and is re-sent the same way.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from celery import Celery, signals
from sqlalchemy.orm import Session

from selectit.contract import JobStatus, ModelSpec, ScoringEngine
from selectit.errors import SelectitError
from selectit.jobs import ticks
from selectit.jobs.leases import requeue_expired as requeue_expired_jobs
from selectit.jobs.leases import worker_id
from selectit.jobs.planner import plan as plan_jobs
from selectit.jobs.pipeline import JobOutcome, Outcome, StreamOptions, run_stream
from selectit.jobs.runner import ScorerCache, default_scorer_factory
from selectit.settings import Settings
from selectit.store import db
from selectit.store.schema import LLM, Job

from . import (
    control,  # this package: `workers` in a checkout, `selectit.workers` installed
)

if TYPE_CHECKING:
    from selectit.scoring.engines import EngineOptions

log = logging.getLogger("selectit.workers")

#: The queue of the cheap bookkeeping tasks (plan, requeue_expired).
CONTROL_QUEUE = "control"
#: At most this many queued jobs are re-sent per model and tick when its queue is empty.
RESEND_LIMIT = 1000
SCORE_JOB = "selectit.score_job"


def queue_for(model_name: str) -> str:
    """The broker queue of a model (by name: every version of it goes to the same workers)."""
    return f"model.{model_name}"


class Fleet:
    """What the tasks of one app run with, given as values: the settings, the database URL (None:
    ./selectit.db) and the engine options (None: the documented defaults), all read from the
    environment once by the entry point that built the app, plus this process's database engine
    and loaded scoring engines."""

    def __init__(self, app: Celery, settings: Settings, db_url: str | None = None,
                 engine_options: EngineOptions | None = None) -> None:
        self.app = app
        self.settings = settings
        self.db_url = db_url
        self.engine_options = engine_options
        self._engine: sa.Engine | None = None
        self._engine_pid: int | None = None
        self._engine_lock = threading.Lock()  # the control thread and the task thread share one engine
        self._scorers: ScorerCache | None = None

    def engine(self, given: sa.Engine | None = None) -> sa.Engine:
        """`given`, else this process's engine (a forked child makes its own: connections do not
        survive fork)."""
        if given is not None:
            return given
        with self._engine_lock:
            if self._engine is None or self._engine_pid != os.getpid():
                self._engine = db.open_store(self.db_url)
                self._engine_pid = os.getpid()
            return self._engine

    def scorer_for(self, model: ModelSpec) -> ScoringEngine:
        """The scoring engine of a model version, loaded once per worker process."""
        if self._scorers is None:
            self._scorers = ScorerCache(default_scorer_factory(self.settings, self.engine_options))
        return self._scorers(model)

    def close(self) -> None:
        """Close the loaded engines (an open vLLM engine process would keep the worker from exiting)."""
        if self._scorers is not None:
            self._scorers.close()

    # -- sending -------------------------------------------------------------------------------
    def send(self, jobs: Iterable[tuple[int, str]]) -> int:
        """Send `score_job` for each (job id, model name) to the model's queue; how many were sent."""
        sent = 0
        for job_id, model_name in jobs:
            self.app.send_task(SCORE_JOB, args=[job_id], queue=queue_for(model_name))
            sent += 1
        return sent

    def send_jobs(self, job_ids: Sequence[int], engine: sa.Engine | None = None) -> int:
        """Send `score_job` for each job id (after the commit that created them); how many were sent."""
        if not job_ids:
            return 0
        with db.read_scope(self.engine(engine)) as session:
            return self.send(_with_model_names(session, job_ids))

    def queue_length(self, name: str) -> int:
        """Messages waiting in broker queue `name` (0 if it does not exist)."""
        with self.app.connection_for_write() as conn:
            try:
                return conn.default_channel.queue_declare(queue=name, passive=True).message_count
            except Exception:  # noqa: BLE001 - a queue that does not exist holds nothing
                return 0

    def send_and_resend(self, job_ids: Sequence[int], engine: sa.Engine | None = None) -> tuple[int, int]:
        """Send the new jobs, then re-send the queued jobs of each model whose broker queue is
        empty (their message was lost; a duplicate is harmless: `score_job` of a job that is not
        queued scores nothing twice). What is sent is read in one session; (sent, re-sent)."""
        with db.read_scope(self.engine(engine)) as session:
            new = _with_model_names(session, job_ids) if job_ids else []
            queued = _queued_by_model(session)
        sent = self.send(new)
        resent = sum(self.send((i, name) for i in ids) for name, ids in queued.items()
                     if self.queue_length(queue_for(name)) == 0)
        return sent, resent

    # -- the tasks' bodies ---------------------------------------------------------------------
    def plan(self, dataset: str | None = None, model: str | None = None,
             prompt_set: str | None = None) -> dict[str, int]:
        ids = plan_jobs(self.engine(), dataset=dataset, model=model, prompt_set=prompt_set, strict=False,
                        settings=self.settings)
        sent, resent = self.send_and_resend(ids)
        if ids or resent:
            log.info("planned %d job(s), re-sent %d", len(ids), resent)
        return {"planned": len(ids), "sent": sent, "resent": resent}

    def score_job(self, job_id: int) -> dict[str, Any]:
        """Score job `job_id`, then the queued jobs of its model version one after the other, each
        claimed and read while the one before ends (`selectit.jobs.pipeline`); a message whose job
        is taken wakes the worker for another queued job of that model version. The first job's
        outcome, with those of the jobs after it under `then`."""
        options = StreamOptions(settings=self.settings, follow=True, wake=True, stopping=_worker_stopping,
                                on_outcome=self._after_job)
        outcomes = run_stream(self.engine(), int(job_id), self.scorer_for, worker_id(), options)
        first, *then = (_summary(o) for o in outcomes)
        return {**first, "then": then} if then else first

    def _after_job(self, outcome: JobOutcome) -> None:
        if outcome.status in (Outcome.RETRY, Outcome.RELEASED) and outcome.model:
            # back in the queue (an error with attempts left, or claimed ahead by a stopping worker):
            # its message may have been taken already, so it is sent again
            self.send([(outcome.job_id, outcome.model)])
        elif outcome.status == Outcome.LOAD_FAILED:
            # Not sent again at once (this worker would load and fail in a loop): the job stays queued,
            # uncharged, and the control loop re-sends it once its model's queue is empty.
            log.error("job %s: the model could not be loaded, nothing was claimed or charged: %s", outcome.job_id,
                      outcome.error)
        log.info("job %s: %s (%d ok, %d failed)", outcome.job_id, outcome.status, outcome.scored, outcome.failed)

    def requeue_expired(self) -> dict[str, int]:
        ids = requeue_expired_jobs(self.engine(), self.settings)
        _, resent = self.send_and_resend(ids)
        if ids or resent:
            log.info("requeued %d expired job(s), re-sent %d", len(ids), resent)
        return {"requeued": len(ids), "resent": resent}

    # -- the control loop ----------------------------------------------------------------------
    def control_ticks(self) -> list[control.Tick]:
        """The fleet's periodic bookkeeping: requeue expired leases, plan new cells (each also
        re-sends the messages a broker lost)."""
        return [control.Tick("requeue-expired", self.settings.requeue_interval, self.requeue_expired),
                control.Tick("plan", self.settings.plan_interval, self.plan)]

    def at_start(self, worker: object) -> control.ControlLoop | None:
        """As the worker starts: open the database (the schema check takes a moment: not on the
        first job's clock), then the control loop, if this worker keeps the clock."""
        try:
            self.engine()
        except Exception as exc:  # noqa: BLE001 - the first task opens it again, and says why
            log.warning("the database could not be opened yet: %s", exc)
        return self.control_loop(worker)

    def control_loop(self, worker: object) -> control.ControlLoop | None:
        # The workers that serve the control queue keep the clock (`selectit worker --no-control` does not).
        if CONTROL_QUEUE not in self.app.amqp.queues.consume_from:
            return None
        log.info("control loop: %s", ", ".join(f"{t.name} every {t.interval:g} s" for t in self.control_ticks()))
        return control.ControlLoop(self.control_ticks(), control.RedisGate(self.app.conf.broker_url),
                                   record=self.record_tick)

    def record_tick(self, name: str, started_at: Any, seconds: float, error: str | None) -> None:
        """Store a control tick's run in `control_ticks` (`selectit status` shows it)."""
        ticks.record_tick(self.engine(), name, worker_id(), started_at, seconds, error)


def _summary(outcome: JobOutcome) -> dict[str, Any]:
    return {"job_id": outcome.job_id, "status": str(outcome.status), "scored": outcome.scored,
            "failed": outcome.failed}


def _worker_stopping() -> bool:
    """Whether this Celery worker was told to stop (warm or cold): a stream ends after its job and
    gives back the job it claimed ahead."""
    from celery.worker import state

    return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))


def _with_model_names(session: Session, job_ids: Sequence[int]) -> list[tuple[int, str]]:
    names = dict(session.execute(sa.select(Job.id, LLM.name).join(LLM, LLM.id == Job.model_id)
                                 .where(Job.id.in_(list(job_ids)))).all())
    return [(i, names[i]) for i in job_ids]


def _queued_by_model(session: Session) -> dict[str, list[int]]:
    """model name → its queued job ids (the first `RESEND_LIMIT`, oldest first)."""
    ranked = (sa.select(LLM.name, Job.id, sa.func.row_number().over(partition_by=LLM.name, order_by=Job.id).label("n"))
              .join(LLM, LLM.id == Job.model_id).where(Job.status == JobStatus.QUEUED).subquery())
    found: dict[str, list[int]] = {}
    for name, job_id in session.execute(sa.select(ranked.c.name, ranked.c.id).where(ranked.c.n <= RESEND_LIMIT)
                                        .order_by(ranked.c.name, ranked.c.id)):
        found.setdefault(name, []).append(job_id)
    return found


def make_app(settings: Settings, *, db_url: str | None = None,
             engine_options: EngineOptions | None = None) -> Celery:
    """The fleet's Celery app, configured from `settings` (the broker and its timeout, the
    intervals, the leases), its tasks bound to `db_url` and `engine_options`.

        >>> make_app(Settings(broker_url="memory://")).conf.task_serializer
        'json'
    """
    app = Celery("selectit", broker=settings.broker_url, set_as_current=False)
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
        broker_connection_timeout=settings.broker_timeout,
        broker_transport_options={"socket_timeout": settings.broker_timeout,
                                  "socket_connect_timeout": settings.broker_timeout,
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
    fleet = Fleet(app, settings, db_url, engine_options)
    app.fleet = fleet  # type: ignore[attr-defined]

    @app.task(name="selectit.plan")
    def plan(dataset: str | None = None, model: str | None = None, prompt_set: str | None = None) -> dict[str, int]:
        """Plan the missing cells into jobs and enqueue them (after the commit); resend lost ones."""
        return fleet.plan(dataset, model, prompt_set)

    @app.task(name=SCORE_JOB)
    def score_job(job_id: int) -> dict[str, Any]:
        """Claim job `job_id`, score its missing cells, mark it done, then the next queued jobs of its
        model version (a job not queued: the oldest queued one of its model version, if any)."""
        return fleet.score_job(job_id)

    @app.task(name="selectit.requeue_expired")
    def requeue_expired() -> dict[str, int]:
        """Expired leases → back in the queue (or failed after N attempts); resend lost messages."""
        return fleet.requeue_expired()

    app.steps["worker"].add(control.worker_step(fleet.at_start))
    return app


@signals.worker_shutdown.connect
def close_engines(sender: Any = None, **_: Any) -> None:
    """Close the engines a stopping worker's app loaded: an open vLLM engine process would keep the
    worker from exiting."""
    fleet = getattr(getattr(sender, "app", None), "fleet", None)
    if isinstance(fleet, Fleet):
        fleet.close()


def fleet_of(app: Celery) -> Fleet:
    """The `Fleet` a `make_app` app's tasks run with."""
    return app.fleet  # type: ignore[attr-defined,no-any-return]


def enqueue(engine: sa.Engine, job_ids: Sequence[int], settings: Settings) -> tuple[int, int]:
    """`selectit plan`: send the planned jobs and re-send those a lost broker dropped; (sent, re-sent).

    A broker that cannot be reached is one `SelectitError` naming the fix (the jobs stay queued).
    """
    app = make_app(settings)
    try:
        return fleet_of(app).send_and_resend(job_ids, engine)
    except Exception as exc:  # noqa: BLE001 - kombu raises many kinds
        raise SelectitError(
            f"planned {len(job_ids)} job(s), but sending jobs to the broker failed: {exc}. "
            "They stay queued in the database; start Redis (or set $SELECTIT_BROKER_URL) "
            "and run `selectit plan` again, or let the workers' control loop re-send them.") from exc
    finally:
        app.close()  # its broker connections


def run_worker(settings: Settings, *, models: Sequence[str], control_queue: bool, pool: str, concurrency: int,
               db_url: str | None = None, engine_options: EngineOptions | None = None) -> None:
    """`selectit worker`: a Celery worker on the models' queues (and the control queue), its tasks
    running with these values."""
    app = make_app(settings, db_url=db_url, engine_options=engine_options)
    queues = [queue_for(m) for m in models] + ([CONTROL_QUEUE] if control_queue or not models else [])
    node = f"{'+'.join(models) or 'control'}@%h"
    app.worker_main(["worker", "-Q", ",".join(queues), "--pool", pool, "--concurrency", str(concurrency),
                     "-n", node, "--loglevel", "INFO", "--without-gossip", "--without-mingle"])


@functools.cache
def app_from_env() -> Celery:
    """The app of `celery -A selectit.workers.app`: the settings and engine options read from the
    environment once, here, with the database URL."""
    from selectit.scoring.engines import EngineOptions

    return make_app(Settings.from_env(), db_url=db.resolve_url(None), engine_options=EngineOptions.from_env())


def __getattr__(name: str) -> Any:
    # `celery -A selectit.workers.app` looks for the module's `app`: built when it asks, not at import.
    if name == "app":
        return app_from_env()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
