"""Running jobs: the one code path behind `selectit score` and the Celery workers.

A runner claims a job with a lease (`selectit.jobs.leases`), scores the job's cells that are still
missing in small batches through a `ScoringEngine` while a writer thread commits the batches
already scored and renews the lease after each (`BatchWriter`), and marks the job done. A killed
runner loses at most `BATCHES_IN_FLIGHT` batches; nothing is written twice (`selectit.jobs.cells`).

No torch here: the engine comes from `scorer_for` (by default `$SELECTIT_SCORER`, see
`default_scorer_factory`), so this module imports without it.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from selectit.contract import (
    CellResult,
    JobStatus,
    ModelSpec,
    RatingRequest,
    ScoringEngine,
    Turns,
    split_on_failure,
)
from selectit.errors import ModelLoadError
from selectit.jobs.cells import cells_to_score, requests_for, write_results
from selectit.jobs.leases import claim, heartbeat, release, requeue_expired, worker_id
from selectit.jobs.planner import (
    failed_cells,
    missing_cells,
    open_jobs_in_scope,
    plan,
    reset_failed,
    resolve_scope,
    total_cells,
)
from selectit.jobs.progress import ScoreProgress, TqdmProgress  # noqa: F401 - re-exported
from selectit.settings import DEFAULT_SETTINGS, Settings, SettingsError, variable
from selectit.store import db
from selectit.store.schema import (
    LLM,
    Job,
    JobSample,
    Prompt,
    Sample,
    Throughput,
    utcnow,
)
from selectit.timing import phase

if TYPE_CHECKING:
    from selectit.scoring.engines import EngineOptions

#: A model version → its loaded scoring engine.
ScorerFor = Callable[[ModelSpec], ScoringEngine]


class Outcome(StrEnum):
    """What became of one `run_job` call."""

    DONE = "done"  # every cell of the job is scored (ok, or failed)
    SKIPPED = "skipped"  # not claimable: done, or held by another worker
    RETRY = "retry"  # an error; the job is back in the queue for its next attempt
    FAILED = "failed"  # an error on its last attempt; the job is failed
    LOST = "lost"  # the lease expired and another worker took the job over
    LOAD_FAILED = "load failed"  # the model could not be loaded: the job was not claimed (queued, uncharged)


@dataclass
class JobOutcome:
    job_id: int
    status: Outcome
    scored: int = 0  # ok cells written
    failed: int = 0  # failed cells written
    error: str | None = None
    model: str | None = None  # the job's model name (its broker queue); None for a job not found


def _in_batches(requests: list[RatingRequest], batch_size: int) -> list[list[RatingRequest]]:
    """`requests` (grouped by sample) cut into batches of `batch_size` samples."""
    batches: list[list[RatingRequest]] = []
    samples_in_last = 0
    for i, req in enumerate(requests):
        if i == 0 or req.sample_id != requests[i - 1].sample_id:  # a new sample
            if not batches or samples_in_last == batch_size:
                batches.append([])
                samples_in_last = 0
            samples_in_last += 1
        batches[-1].append(req)
    return batches


def _score_batch(scorer: ScoringEngine, requests: Sequence[RatingRequest],
                 computed: Callable[[int], None] | None = None) -> list[CellResult]:
    """Score a batch; where the engine raises, isolate the requests that fail on their own.

    `computed(n)` hears of cells as the engine finishes them, before the batch is written.
    """
    def per_request(reqs: list[RatingRequest]) -> list[list[CellResult]]:
        owner = {(r.sample_id, r.turn, p): i for i, r in enumerate(reqs) for p in r.prompt_ids}
        # an engine that does not say the turn (a hook): the next request of that (sample, prompt)
        waiting: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(reqs):
            for p in r.prompt_ids:
                waiting.setdefault((r.sample_id, p), []).append(i)
        grouped: list[list[CellResult]] = [[] for _ in reqs]
        for cell in scorer.score(reqs, computed):
            queue = waiting.get((cell.sample_id, cell.prompt_id)) or []
            i = owner.get((cell.sample_id, cell.turn, cell.prompt_id))
            i = i if i in queue else (queue[0] if queue else None)
            if i is None:
                raise RuntimeError(f"the engine returned a cell no request asked for: sample {cell.sample_id}, "
                                   f"prompt {cell.prompt_id}")
            queue.remove(i)
            grouped[i].append(cell if cell.turn == reqs[i].turn else dataclasses.replace(cell, turn=reqs[i].turn))
        return grouped

    results: list[CellResult] = []
    for req, cells, err in split_on_failure(requests, per_request):
        results.extend(cells if err is None else
                       (CellResult.failed(req.sample_id, p, err, turn=req.turn) for p in req.prompt_ids))
    return results


def _after_error(status: JobStatus | None) -> Outcome:
    return Outcome.FAILED if status == JobStatus.FAILED else Outcome.RETRY


#: Scored batches that may wait for the writer: the GPU scores batch n+1 (and n+2) while batch n
#: is written, and stops when this many are waiting (the bookkeeping has fallen behind).
WRITE_QUEUE_BATCHES = 1
#: The most batches of a job a killed worker loses: the one being written, those waiting for the
#: writer, and the one being scored.
BATCHES_IN_FLIGHT = 1 + WRITE_QUEUE_BATCHES + 1


class _Lost(Exception):
    """The job's lease expired and another worker took it over."""


class BatchWriter:
    """Writes a job's scored batches and renews its lease, on a thread with its own connection,
    so the scorer never waits for the database between forwards.

    `put(results, last)` hands a batch over (it blocks while `WRITE_QUEUE_BATCHES` batches
    already wait); `close()` waits for the last write. A write error or a lost lease is raised by
    the next `put`/`close`. Each batch is one transaction: its cells (one set-based statement) and
    the lease renewal — and for the last batch, the job marked done — so a batch is stored whole
    or not at all.
    """

    def __init__(self, engine: Engine, job_id: int, model_id: int, worker: str, lease: float,
                 engine_name: str | None, engine_version: str | None) -> None:
        self._args = (engine, job_id, model_id, worker, lease, engine_name, engine_version)
        self._queue: queue.Queue[tuple[list[CellResult], bool] | None] = queue.Queue(maxsize=WRITE_QUEUE_BATCHES)
        #: After `close()`: True if the last batch's transaction also marked the job done.
        self.finished = False
        self._committed: collections.deque[tuple[int, int]] = collections.deque()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"selectit-writer-{job_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        engine, job_id, model_id, worker, lease, engine_name, engine_version = self._args
        ended = False
        try:
            with engine.connect() as conn:  # this thread's own connection for the whole job
                while True:
                    item = self._queue.get()
                    if item is None:
                        ended = True
                        break
                    results, last = item
                    if self._error is not None:
                        continue  # drain: nothing more is written after a failure
                    with Session(bind=conn) as session, session.begin():
                        write_results(session, model_id, results, worker, engine_name, engine_version)
                        still_ours = heartbeat(session, job_id, worker, lease)
                        if last and still_ours:  # the job's end rides on its last batch's commit
                            self.finished = mark_done(session, job_id, worker)
                    n_failed = sum(1 for r in results if not r.ok)
                    self._committed.append((len(results) - n_failed, n_failed))
                    if not still_ours:
                        self._error = _Lost()
        except BaseException as exc:  # noqa: BLE001 - handed to the scoring thread
            self._error = exc
            while not ended and self._queue.get() is not None:  # unblock a waiting put until close()
                pass

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, results: list[CellResult], last: bool = False) -> None:
        """Hand a scored batch over; `last`: the job's last one (its commit marks the job done)."""
        self._check()
        self._queue.put((results, last))

    def close(self) -> None:
        """Wait until every batch handed over is written (or the writer failed)."""
        self._queue.put(None)
        self._thread.join()
        self._check()

    def abandon(self) -> None:
        """Stop without waiting for the result (the job failed or was interrupted)."""
        if self._thread.is_alive():
            self._error = self._error or _Lost()
            try:
                self._queue.put(None, timeout=60)
            except queue.Full:
                pass
            self._thread.join(60)

    def committed(self) -> list[tuple[int, int]]:
        """(ok, failed) of each batch committed since the last call."""
        out = []
        while self._committed:
            out.append(self._committed.popleft())
        return out


def mark_done(session: Session, job_id: int, worker: str) -> bool:
    """Mark `worker`'s running job done and drop its membership rows; False if it is not its own."""
    res = session.execute(sa.update(Job).where(Job.id == job_id, Job.worker == worker, Job.status == JobStatus.RUNNING)
                          .values(status=str(JobStatus.DONE), finished_at=utcnow(), lease_expires_at=None))
    if res.rowcount != 1:
        return False
    session.execute(sa.delete(JobSample).where(JobSample.job_id == job_id))
    return True


def run_job(engine: Engine, job_id: int, scorer_for: ScorerFor, worker: str, *,
            on_cells: Callable[[int, int], None] | None = None,
            on_computed: Callable[[int], None] | None = None,
            settings: Settings = DEFAULT_SETTINGS, lease: float | None = None,
            batch_size: int | None = None) -> JobOutcome:
    """Claim job `job_id`, score its still-missing cells in committed batches, mark it done.

    `scorer_for(model)` gives the (cached) engine of a model version; it is called before the
    claim, so a slow model load does not eat the lease. Batches are written (with the lease
    renewal) by a `BatchWriter` beside the scorer; a killed runner loses at most
    `BATCHES_IN_FLIGHT` batches. `on_computed(n)` is called as the engine finishes cells (a progress
    bar that moves per request), `on_cells(ok, failed)`, on this thread, for each
    committed batch. Safe to call for a job that is done or held by another worker: it returns
    `Outcome.SKIPPED` and scores nothing. `lease` and `batch_size` override `settings`.

    A model that cannot be loaded (a missing key, an unreachable server, a tokenizer) is no fault of
    the job's cells: the job is not claimed, keeps its attempts and stays queued with the error
    noted, and the outcome is `Outcome.LOAD_FAILED`.
    """
    lease = settings.lease_seconds if lease is None else lease
    batch_size = batch_size or settings.batch_size
    with db.session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.QUEUED:
            return JobOutcome(job_id, Outcome.SKIPPED)
        model = session.get(LLM, job.model_id)
    outcome = JobOutcome(job_id, Outcome.DONE, model=model.name)
    try:
        with phase("model load"):
            scorer = scorer_for(ModelSpec.of(model))
    except Exception as exc:  # noqa: BLE001 - noted on the queued job; nothing is charged
        error = str(ModelLoadError.of(model.name, exc))
        with db.session_scope(engine) as session:  # `selectit status` shows why the job waits
            session.execute(sa.update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                            .values(error=error[:2000]))
        return JobOutcome(job_id, Outcome.LOAD_FAILED, error=error, model=model.name)
    if not claim(engine, job_id, worker, lease=lease):
        return JobOutcome(job_id, Outcome.SKIPPED, model=model.name)
    started = time.monotonic()  # after the model load: the rate `score --estimate` uses

    def report(writer: BatchWriter) -> None:
        for ok, failed in writer.committed():
            outcome.scored += ok
            outcome.failed += failed
            if on_cells:
                on_cells(ok, failed)

    writer: BatchWriter | None = None
    try:
        # One read for the whole job: its owed cells, prompts and sample texts; the loop below
        # only scores, and the writer thread is the only one writing.
        with phase("DB reads"), db.session_scope(engine) as session:
            job = session.get(Job, job_id)
            cells = cells_to_score(session, job, settings.max_cell_attempts)
            prompts = {p.id: p for p in session.scalars(sa.select(Prompt).where(Prompt.id.in_(job.prompt_ids)))}
            batches = _in_batches(requests_for(session, cells, prompts, job.turn), batch_size)
        writer = BatchWriter(engine, job_id, job.model_id, worker, lease, scorer.engine, scorer.engine_version)
        for i, requests in enumerate(batches):
            with phase("scoring"):
                results = _score_batch(scorer, requests, on_computed)
            with phase("DB writes"):
                writer.put(results, last=i == len(batches) - 1)
            report(writer)
        with phase("DB writes"):
            writer.close()
        report(writer)
        if not batches:  # nothing left to score: no batch to carry the end
            with db.session_scope(engine) as session:
                writer.finished = mark_done(session, job_id, worker)
        if not writer.finished:
            outcome.status = Outcome.LOST
        elif outcome.scored + outcome.failed:
            with db.session_scope(engine) as session:
                session.add(Throughput(model_id=job.model_id, engine=scorer.engine or "unknown",
                                       engine_version=scorer.engine_version, worker=worker, job_id=job_id,
                                       cells=outcome.scored + outcome.failed, tokens=job.est_tokens or 0,
                                       seconds=time.monotonic() - started))
    except _Lost:
        writer.abandon()
        report(writer)
        outcome.status = Outcome.LOST
    except KeyboardInterrupt:
        if writer is not None:
            writer.abandon()
        release(engine, job_id, worker, error="interrupted", count_attempt=False, settings=settings)
        raise
    except Exception as exc:  # noqa: BLE001 - the job goes back to the queue (bounded)
        if writer is not None:
            writer.abandon()
            report(writer)
        status = release(engine, job_id, worker, error=f"{type(exc).__name__}: {exc}", settings=settings)
        outcome.status = _after_error(status)
        outcome.error = f"{type(exc).__name__}: {exc}"
    return outcome


# --------------------------------------------------------------------------------------------
# Scoring engines
# --------------------------------------------------------------------------------------------


def default_scorer_factory(settings: Settings = DEFAULT_SETTINGS,
                           engine_options: EngineOptions | None = None) -> ScorerFor:
    """`$SELECTIT_SCORER` (`module:callable`, model version → engine), by default
    `selectit.scoring.engines:load_engine`: the torch or the vLLM engine, as `engine_options` (default:
    `$SELECTIT_ENGINE` and friends) say.

    The hook lets a deployment plug in another scoring backend (and the tests inject faults);
    `selectit score` and the Celery workers both go through it.
    """
    spec = settings.scorer
    if spec == Settings.scorer:
        from selectit.scoring.engines import load_engine

        return functools.partial(load_engine, options=engine_options)
    # Deprecated: engines are registered by name now (the `selectit.engines` entry points).
    module, _, attr = spec.partition(":")
    try:
        hook = getattr(importlib.import_module(module), attr or "load_scorer")
    except (ImportError, AttributeError) as exc:
        raise SettingsError(f"${variable('scorer')}={spec!r} cannot be loaded ({exc}); set it to "
                            "module:function or unset it to use selectit's own scorer.") from exc
    return lambda model: _HookEngine.of(hook(model))


class _HookEngine(ScoringEngine):
    """What a `$SELECTIT_SCORER` hook returned, held to the engine contract."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.engine = getattr(inner, "engine", None) or "hook"  # type: ignore[misc]
        self.engine_version = getattr(inner, "engine_version", None) or type(inner).__qualname__

    @classmethod
    def of(cls, inner: object) -> ScoringEngine:
        return inner if isinstance(inner, ScoringEngine) else cls(inner)

    @property  # type: ignore[override]
    def forwards(self) -> int:
        return int(getattr(self.inner, "forwards", 0))

    def score(self, requests: Sequence[RatingRequest],
              progress: Callable[[int], None] | None = None) -> list[CellResult]:
        return list(self.inner.score(requests, progress))  # type: ignore[attr-defined]

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


class ScorerCache:
    """`scorer_for` that loads each model version once per process (by model id).

    `announce(text)` hears of each load before it starts ("loading model NAME…", see
    `selectit.scoring.loading.loading_note`) and `announce(None)` when it has ended.
    """

    def __init__(self, load: ScorerFor | None = None, settings: Settings = DEFAULT_SETTINGS,
                 announce: Callable[[str | None], None] | None = None) -> None:
        self._load = load
        self._settings = settings
        self._announce = announce
        self.scorers: dict[int, ScoringEngine] = {}

    def __call__(self, model: ModelSpec) -> ScoringEngine:
        if model.id not in self.scorers:
            if self._load is None:
                self._load = default_scorer_factory(self._settings)
            if self._announce is None:
                self.scorers[model.id] = self._load(model)
                return self.scorers[model.id]
            from selectit.scoring.loading import loading_note

            self._announce(loading_note(model.name, model.source, model.fingerprint, served=bool(model.endpoint)))
            try:
                self.scorers[model.id] = self._load(model)
            finally:
                self._announce(None)
        return self.scorers[model.id]

    @property
    def forwards(self) -> int:
        """Forward passes run by the engines so far (those that count them)."""
        return sum(s.forwards for s in self.scorers.values())

    def close(self) -> None:
        """Close the engines that hold resources (vLLM's engine process: left open, the
        interpreter waits for it at exit forever)."""
        scorers, self.scorers = list(self.scorers.values()), {}
        for scorer in scorers:
            scorer.close()


# --------------------------------------------------------------------------------------------
# In-process scoring (`selectit score`)
# --------------------------------------------------------------------------------------------


@dataclass
class ScoreSummary:
    scored: int = 0  # ok cells written by this run
    failed: int = 0  # cells of the scope this run left failed (a failed attempt, or a job given up)
    skipped: int = 0  # cells of the scope scored ok before the run
    jobs: int = 0  # jobs this run completed
    forwards: int = 0
    interrupted: bool = False
    retryable: int = 0  # failed cells of the scope below the attempt limit as the run ends: the next run tries them
    exhausted: int = 0  # failed cells of the scope at the attempt limit as the run ends: `retry_failed` tries them
    reset: int = 0  # failed cells given their attempts back by `retry_failed`

    @property
    def left_failed(self) -> int:
        """Failed cells of the scope as the run ends: the scope cannot be fully ranked yet."""
        return self.retryable + self.exhausted


def score_in_process(engine: Engine, *, dataset: str | None = None, model: str | None = None,
                     prompt_set: str | None = None, progress: ScoreProgress | None = None,
                     batch_size: int | None = None, scorer_for: ScorerFor | None = None,
                     worker: str | None = None, poll: float = 1.0, retry_failed: bool = False,
                     settings: Settings = DEFAULT_SETTINGS, engine_options: EngineOptions | None = None,
                     turns: Turns | str = Turns.ALL) -> ScoreSummary:
    """Plan the missing cells of the scope (every rated turn, or with `Turns.LAST` the last) and run
    the jobs here, through `run_job`.

    Every model with missing cells is loaded first: one that cannot be loaded raises
    `ModelLoadError` before any job is claimed, and no cell is charged an attempt.
    `retry_failed` gives the scope's failed cells their attempts back first (`reset_failed`), so
    cells at the attempt limit are tried again. Jobs left `running` by a killed run on this host
    are taken over at once (their `host:pid` is dead); jobs held by live workers elsewhere are
    waited for, and taken over if their lease expires. Ctrl-C puts the current job back in the
    queue and returns with `interrupted`. The summary counts the failed cells from the database
    as the run ends.
    """
    worker = worker or worker_id()
    # A bad $SELECTIT_SCORER fails here, before any job is claimed.
    # A progress written for an older `ScoreProgress` may lack `loading`: it is then not told.
    cache = scorer_for if scorer_for is not None else ScorerCache(default_scorer_factory(settings, engine_options),
                                                                  announce=getattr(progress, "loading", None))
    summary = ScoreSummary()
    started = utcnow()
    with phase("planning"), db.session_scope(engine) as session:
        scope = resolve_scope(session, dataset=dataset, model=model, prompt_set=prompt_set, turns=turns)
        if retry_failed:
            summary.reset = reset_failed(session, scope)
        rows = missing_cells(session, scope, settings=settings)
        n_missing = sum(len(r.prompt_ids) for r in rows)
        summary.skipped = total_cells(session, scope) - n_missing - failed_cells(session, scope, settings).exhausted
        to_load = [ModelSpec.of(m) for m in session.scalars(
            sa.select(LLM).where(LLM.id.in_({r.model_id for r in rows})).order_by(LLM.id))]

    def on_cells(ok: int, failed: int) -> None:
        summary.scored += ok
        if progress:
            progress.advance(ok + failed)

    if progress:
        progress.start(n_missing)
    try:
        for spec in to_load:  # every model before the first claim: a load failure charges nothing
            try:
                with phase("model load"):
                    cache(spec)
            except Exception as exc:  # noqa: BLE001 - whatever the engine raised, as one message
                raise ModelLoadError.of(spec.name, exc) from exc
        with phase("planning"):
            requeue_expired(engine, settings)
            plan(engine, dataset=dataset, model=model, prompt_set=prompt_set, settings=settings, turns=turns)
        tried: set[int] = set()
        while True:
            with phase("DB reads"), db.session_scope(engine) as session:
                open_jobs = open_jobs_in_scope(session, scope)
            todo = [j for j, status, _ in open_jobs if status == JobStatus.QUEUED and j not in tried]
            if not todo:
                held = sum(1 for _, status, _ in open_jobs if status == JobStatus.RUNNING)
                if not held:
                    break
                if progress:
                    progress.note(f"waiting for {held} job(s) held by other workers")
                time.sleep(poll)
                if requeue_expired(engine, settings):
                    tried.clear()
                continue
            for job_id in todo:
                tried.add(job_id)
                out = run_job(engine, job_id, cache, worker, batch_size=batch_size, on_cells=on_cells,
                              on_computed=progress.computed if progress else None, settings=settings)
                if out.status == Outcome.DONE:
                    summary.jobs += 1
                elif out.status == Outcome.RETRY:
                    tried.discard(job_id)  # give it its next attempt in this run
                elif out.status == Outcome.LOAD_FAILED:  # a model first needed now (a job taken over)
                    raise ModelLoadError(out.error)
                elif out.status == Outcome.FAILED and out.error and progress:
                    progress.note(f"job {job_id} failed: {out.error}")
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.forwards = getattr(cache, "forwards", 0)
        if scorer_for is None:  # the engines this run loaded end with it
            cache.close()
    with db.read_scope(engine) as session:
        counts = failed_cells(session, scope, settings, worker=worker, since=started)
    summary.failed, summary.retryable, summary.exhausted = counts.by_run, counts.retryable, counts.exhausted
    return summary
