"""Scoring jobs back to back: the batch writer, a job's scoring loop, and the overlap of the next
job's claim and reads with the current job's tail.

A stream starts from one job (`run_stream`): the model version's engine is loaded, the job is
claimed and its requests read. While a job's last batches score (`AHEAD_BATCHES`), a thread
claims the next queued job of the same model version for the same worker (`leases.claim_next`, a
lease like any claim) and reads its cells, prompts and sample texts into batches of requests;
when the last batch is scored the engine starts the next job at once, while the writer thread
still commits the last batch (and marks the job done). So the engine waits for neither the
database nor the broker between jobs. A worker that is told to stop gives its claimed-ahead job back unscored, with no
attempt charged (`Outcome.RELEASED`; the caller sends it to the broker again).

Bounds, as for a single job: at most `BATCHES_IN_FLIGHT` scored batches are not yet committed
(the previous job's writer is joined before the next job's first batch is handed over), and a
killed worker's claimed-ahead job is taken back like any other (its lease expires, or its holder
on this host is seen dead). Nothing is written twice: scores are insert-or-ignore.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from selectit.contract import CellResult, JobStatus, ModelSpec, RatingRequest, ScoringEngine, split_on_failure
from selectit.errors import ModelLoadError
from selectit.jobs.cells import cells_to_score, planned_tokens, requests_for, write_results
from selectit.jobs.leases import claim, claim_next, heartbeat, release
from selectit.jobs.progress import CellTokens
from selectit.settings import DEFAULT_SETTINGS, Settings
from selectit.store import db
from selectit.store.schema import LLM, Job, JobSample, Prompt, Throughput, utcnow
from selectit.timing import phase

log = logging.getLogger("selectit.jobs")

#: A model version → its loaded scoring engine.
ScorerFor = Callable[[ModelSpec], ScoringEngine]


class Outcome(StrEnum):
    """What became of one job of a `run_stream` (or `run_job`) call."""

    DONE = "done"  # every cell of the job is scored (ok, or failed)
    SKIPPED = "skipped"  # not claimable: done, or held by another worker
    RETRY = "retry"  # an error; the job is back in the queue for its next attempt
    FAILED = "failed"  # an error on its last attempt; the job is failed
    LOST = "lost"  # the lease expired and another worker took the job over
    LOAD_FAILED = "load failed"  # the model could not be loaded: the job was not claimed (queued, uncharged)
    RELEASED = "released"  # claimed ahead, then given back unscored and uncharged (the worker is stopping)


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


#: Cells the engine finished: (cells, their prompt tokens as the planner counts them, None if not known).
OnComputed = Callable[[int, int | None], None]


def _tokens_of(request: RatingRequest, tokens: dict[tuple[int, int, int], int] | None) -> int | None:
    """The planner's tokens of the request's cells (None where a cell's are not known)."""
    try:
        return sum(tokens[request.sample_id, request.turn, p] for p in request.prompt_ids) if tokens else None
    except KeyError:
        return None


def _score_batch(scorer: ScoringEngine, requests: Sequence[RatingRequest], computed: OnComputed | None = None,
                 tokens: dict[tuple[int, int, int], int] | None = None) -> list[CellResult]:
    """Score a batch; where the engine raises, isolate the requests that fail on their own.

    `computed(n, tokens)` hears of cells as the engine finishes them, before the batch is written;
    `tokens` gives each (sample, turn, prompt) cell's (`Prepared.tokens`).
    """
    def heard(reqs: list[RatingRequest]) -> Callable[[int], None] | None:
        if computed is None:
            return None
        return CellTokens([(len(r.prompt_ids), _tokens_of(r, tokens)) for r in reqs], computed)

    def per_request(reqs: list[RatingRequest]) -> list[list[CellResult]]:
        owner = {(r.sample_id, r.turn, p): i for i, r in enumerate(reqs) for p in r.prompt_ids}
        # an engine that does not say the turn (a hook): the next request of that (sample, prompt)
        waiting: dict[tuple[int, int], list[int]] = {}
        for i, r in enumerate(reqs):
            for p in r.prompt_ids:
                waiting.setdefault((r.sample_id, p), []).append(i)
        grouped: list[list[CellResult]] = [[] for _ in reqs]
        for cell in scorer.score(reqs, heard(reqs)):
            pending = waiting.get((cell.sample_id, cell.prompt_id)) or []
            i = owner.get((cell.sample_id, cell.turn, cell.prompt_id))
            i = i if i in pending else (pending[0] if pending else None)
            if i is None:
                raise RuntimeError(f"the engine returned a cell no request asked for: sample {cell.sample_id}, "
                                   f"prompt {cell.prompt_id}")
            pending.remove(i)
            grouped[i].append(cell if cell.turn == reqs[i].turn else dataclasses.replace(cell, turn=reqs[i].turn))
        return grouped

    results: list[CellResult] = []
    for req, cells, err in split_on_failure(requests, per_request):
        results.extend(cells if err is None else
                       (CellResult.failed(req.sample_id, p, err, turn=req.turn) for p in req.prompt_ids))
    return results


#: Scored batches that may wait for the writer: the GPU scores batch n+1 (and n+2) while batch n
#: is written, and stops when this many are waiting (the bookkeeping has fallen behind).
WRITE_QUEUE_BATCHES = 1
#: The most batches a killed worker loses: the one being written, those waiting for the writer,
#: and the one being scored (of this job or, at a job boundary, of the next).
BATCHES_IN_FLIGHT = 1 + WRITE_QUEUE_BATCHES + 1


#: The next job is claimed and read while this many last batches of a job score: a job's last
#: batch may hold a single sample, too short a time to hide a claim and a read behind.
AHEAD_BATCHES = 2


class _Lost(Exception):
    """The job's lease expired and another worker took it over."""


@dataclass(frozen=True)
class Provenance:
    """Who scores a job, for its score rows and its `throughput` row."""

    worker: str
    engine: str | None
    engine_version: str | None


class BatchWriter:
    """Writes a job's scored batches and renews its lease, on a thread with its own connection,
    so the scorer never waits for the database between forwards.

    `put(results, last)` hands a batch over (it blocks while `WRITE_QUEUE_BATCHES` batches
    already wait); `close()` waits for the last write. A write error or a lost lease is raised by
    the next `put`/`close`. Each batch is one transaction: its cells (one set-based statement) and
    the lease renewal — and for the last batch, the job marked done and its `throughput` row — so a
    batch is stored whole or not at all, and the scorer may start the next job while it commits.
    """

    def __init__(self, engine: Engine, job_id: int, model_id: int, worker: str, lease: float,
                 engine_name: str | None, engine_version: str | None, *, est_tokens: int = 0,
                 started: float | None = None) -> None:
        self._args = (engine, job_id, model_id, Provenance(worker, engine_name, engine_version), lease)
        self._est_tokens = est_tokens
        self._started = time.monotonic() if started is None else started
        self._queue: queue.Queue[tuple[list[CellResult], bool] | None] = queue.Queue(maxsize=WRITE_QUEUE_BATCHES)
        #: After `close()`: True if the last batch's transaction also marked the job done.
        self.finished = False
        self._cells = 0  # written by this writer, for the throughput row
        self._committed: collections.deque[tuple[int, int]] = collections.deque()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"selectit-writer-{job_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        engine, job_id, model_id, who, lease = self._args
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
                        write_results(session, model_id, results, who.worker, who.engine, who.engine_version)
                        still_ours = heartbeat(session, job_id, who.worker, lease)
                        if last and still_ours:  # the job's end rides on its last batch's commit
                            self.finished = mark_done(session, job_id, who.worker)
                            if self.finished and self._cells + len(results):
                                session.add(self._throughput(len(results)))
                    self._cells += len(results)
                    n_failed = sum(1 for r in results if not r.ok)
                    self._committed.append((len(results) - n_failed, n_failed))
                    if not still_ours:
                        self._error = _Lost()
        except BaseException as exc:  # noqa: BLE001 - handed to the scoring thread
            self._error = exc
            while not ended and self._queue.get() is not None:  # unblock a waiting put until close()
                pass

    def _throughput(self, last_cells: int) -> Throughput:
        _, job_id, model_id, who, _ = self._args
        return Throughput(model_id=model_id, engine=who.engine or "unknown", engine_version=who.engine_version,
                          worker=who.worker, job_id=job_id, cells=self._cells + last_cells,
                          tokens=self._est_tokens, seconds=time.monotonic() - self._started)

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


# --------------------------------------------------------------------------------------------
# A claimed job, read and ready to score
# --------------------------------------------------------------------------------------------


@dataclass
class Prepared:
    """A job this worker holds, with its still-owed cells read into batches of requests."""

    job_id: int
    model_id: int
    model: str  # its model's name (the broker queue)
    est_tokens: int
    batches: list[list[RatingRequest]]
    #: (sample_id, turn, prompt_id) → the cell's planner tokens, for the progress bar's time left
    tokens: dict[tuple[int, int, int], int] = dataclasses.field(default_factory=dict)


def read_claimed(engine: Engine, job_id: int, model: str, *, settings: Settings, batch_size: int) -> Prepared:
    """The claimed job's owed cells, prompts and sample texts in one read, cut into batches."""
    with db.session_scope(engine) as session:
        job = session.get(Job, job_id)
        cells = cells_to_score(session, job, settings.max_cell_attempts)
        prompts = {p.id: p for p in session.scalars(sa.select(Prompt).where(Prompt.id.in_(job.prompt_ids)))}
        batches = _in_batches(requests_for(session, cells, prompts, job.turn), batch_size)
        return Prepared(job.id, job.model_id, model, job.est_tokens or 0, batches,
                        planned_tokens(session, cells, prompts))


def claim_and_read(engine: Engine, model_id: int, model: str, worker: str, *, settings: Settings, lease: float,
                   batch_size: int) -> Prepared | None:
    """Claim the oldest queued job of model version `model_id` for `worker` and read it; None if
    there is none. A read that fails gives the job back (charged, as any failed attempt)."""
    job_id = claim_next(engine, model_id, worker, lease=lease)
    if job_id is None:
        return None
    try:
        return read_claimed(engine, job_id, model, settings=settings, batch_size=batch_size)
    except Exception as exc:
        release(engine, job_id, worker, error=f"{type(exc).__name__}: {exc}", settings=settings)
        raise


class _Ahead:
    """`claim()` on a thread of its own: the next job, claimed and read while the current one ends."""

    def __init__(self, claim_one: Callable[[], Prepared | None]) -> None:
        self._claim = claim_one
        self._result: Prepared | None = None
        self._thread = threading.Thread(target=self._run, name="selectit-next-job", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with phase("scoring: next job claimed and read beside it"):
                self._result = self._claim()
        except Exception:  # noqa: BLE001 - the stream ends here; the queue still has the job
            log.exception("claiming the next job failed")

    def result(self) -> Prepared | None:
        self._thread.join()
        return self._result


class _Preparing:
    """The engine's `prepare` (tokenizing) of a batch on a thread of its own while the engine scores
    the batch before, so an accelerator does not wait for the tokenizer between batches: a batch is
    started when the one before it starts scoring, and waited for before it scores itself."""

    def __init__(self, scorer: ScoringEngine) -> None:
        self._prepare: Callable[[Sequence[RatingRequest]], None] | None = getattr(scorer, "prepare", None)
        self._pending: dict[int, threading.Thread] = {}  # id(batch) → its thread

    def start(self, batch: list[RatingRequest]) -> None:
        if self._prepare is None or not batch or id(batch) in self._pending:
            return
        thread = threading.Thread(target=self._run, args=(batch,), name="selectit-prepare", daemon=True)
        self._pending[id(batch)] = thread
        thread.start()

    def _run(self, batch: list[RatingRequest]) -> None:
        try:
            with phase("scoring: next batch tokenized beside it"):
                self._prepare(batch)  # type: ignore[misc]
        except Exception:  # noqa: BLE001 - `score` prepares what was not
            log.exception("preparing the next batch failed")

    def wait(self, batch: list[RatingRequest]) -> None:
        thread = self._pending.pop(id(batch), None)
        if thread is not None:
            thread.join()


# --------------------------------------------------------------------------------------------
# The stream
# --------------------------------------------------------------------------------------------


@dataclass
class StreamOptions:
    """How a stream runs: its knobs and the callers' hooks (all optional)."""

    settings: Settings = DEFAULT_SETTINGS
    lease: float | None = None  # default: settings.lease_seconds
    batch_size: int | None = None  # default: settings.batch_size
    follow: bool = False  # go on with the next queued job of the same model version (the fleet)
    wake: bool = False  # a job that is not queued: start from the next queued one of its model version
    stopping: Callable[[], bool] = lambda: False  # asked between jobs: give the job claimed ahead back
    on_outcome: Callable[[JobOutcome], None] | None = None  # each job's outcome, as it ends
    on_cells: Callable[[int, int], None] | None = None  # (ok, failed) of each committed batch
    on_computed: OnComputed | None = None  # (cells, tokens) as the engine finishes them


def run_stream(engine: Engine, job_id: int, scorer_for: ScorerFor, worker: str,
               options: StreamOptions | None = None) -> list[JobOutcome]:
    """Score job `job_id` (and, with `follow`, the queued jobs of its model version after it, each
    claimed and read while the one before ends); every job's outcome, in order.

    The engine is loaded before the first claim, so a slow load does not eat a lease; a load that
    fails claims nothing (`Outcome.LOAD_FAILED`, the error noted on the queued job).
    """
    opt = options or StreamOptions()
    lease = opt.settings.lease_seconds if opt.lease is None else opt.lease
    batch_size = opt.batch_size or opt.settings.batch_size
    with db.session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            return [JobOutcome(job_id, Outcome.SKIPPED)]
        model = session.get(LLM, job.model_id)
        queued = job.status == JobStatus.QUEUED
        if not queued and not (opt.wake and session.scalar(
                sa.select(Job.id).where(Job.model_id == job.model_id, Job.status == JobStatus.QUEUED).limit(1))):
            return [JobOutcome(job_id, Outcome.SKIPPED, model=model.name)]
    try:
        with phase("model load"):
            scorer = scorer_for(ModelSpec.of(model))
    except Exception as exc:  # noqa: BLE001 - noted on the queued job; nothing is charged
        error = str(ModelLoadError.of(model.name, exc))
        with db.session_scope(engine) as session:  # `selectit status` shows why the job waits
            session.execute(sa.update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
                            .values(error=error[:2000]))
        return [JobOutcome(job_id, Outcome.LOAD_FAILED, error=error, model=model.name)]

    def claim_one() -> Prepared | None:
        return claim_and_read(engine, model.id, model.name, worker, settings=opt.settings, lease=lease,
                              batch_size=batch_size)

    if queued:
        with phase("DB reads"):  # the claim too: the job's database time before it scores, one phase
            claimed = claim(engine, job_id, worker, lease=lease)
        if not claimed:
            return [JobOutcome(job_id, Outcome.SKIPPED, model=model.name)]
        try:
            with phase("DB reads"):
                first: Prepared | None = read_claimed(engine, job_id, model.name, settings=opt.settings,
                                                      batch_size=batch_size)
        except Exception as exc:  # noqa: BLE001 - the job goes back to the queue (bounded)
            return [_released(engine, job_id, model.name, worker, exc, opt.settings)]
    else:  # a wake-up: the message's job is taken, another of its model version waits
        with phase("DB reads"):
            first = claim_one()
        if first is None:
            return [JobOutcome(job_id, Outcome.SKIPPED, model=model.name)]
    stream = _Stream(engine, scorer, worker, lease, opt, claim_one if opt.follow else None)
    return stream.run(first)


def _released(engine: Engine, job_id: int, model: str, worker: str, exc: Exception,
              settings: Settings) -> JobOutcome:
    error = f"{type(exc).__name__}: {exc}"
    status = release(engine, job_id, worker, error=error, settings=settings)
    return JobOutcome(job_id, Outcome.FAILED if status == JobStatus.FAILED else Outcome.RETRY, error=error,
                      model=model)


class _Running:
    """A job whose batches go to its writer; `finish()` waits for the writer and gives the outcome."""

    def __init__(self, engine: Engine, job: Prepared, scorer: ScoringEngine, worker: str, lease: float,
                 opt: StreamOptions) -> None:
        self.engine, self.job, self.worker, self.opt = engine, job, worker, opt
        self.outcome = JobOutcome(job.job_id, Outcome.DONE, model=job.model)
        self.writer = BatchWriter(engine, job.job_id, job.model_id, worker, lease, scorer.engine,
                                  scorer.engine_version, est_tokens=job.est_tokens)

    def report(self) -> None:
        for ok, failed in self.writer.committed():
            self.outcome.scored += ok
            self.outcome.failed += failed
            if self.opt.on_cells:
                self.opt.on_cells(ok, failed)

    def finish(self) -> JobOutcome:
        """After the last batch was handed over: wait for its commit (normally already made)."""
        try:
            self.writer.close()
            self.report()
            if not self.job.batches:  # nothing left to score: no batch to carry the end
                with db.session_scope(self.engine) as session:
                    self.writer.finished = mark_done(session, self.job.job_id, self.worker)
            if not self.writer.finished:
                self.outcome.status = Outcome.LOST
        except _Lost:
            self.report()
            self.outcome.status = Outcome.LOST
        except Exception as exc:  # noqa: BLE001 - the job goes back to the queue (bounded)
            self.fail(exc)
        return self.outcome

    def fail(self, exc: Exception) -> JobOutcome:
        self.writer.abandon()
        self.report()
        if isinstance(exc, _Lost):  # another worker holds it now: nothing to give back
            self.outcome.status = Outcome.LOST
        else:
            out = _released(self.engine, self.job.job_id, self.job.model, self.worker, exc, self.opt.settings)
            self.outcome.status, self.outcome.error = out.status, out.error
        return self.outcome

    def interrupt(self) -> None:
        """Ctrl-C or a cold stop: give the job back without charging the attempt."""
        self.writer.abandon()
        release(self.engine, self.job.job_id, self.worker, error="interrupted", count_attempt=False,
                settings=self.opt.settings)


class _Stream:
    """Jobs of one model version scored back to back by one engine (see the module docstring)."""

    def __init__(self, engine: Engine, scorer: ScoringEngine, worker: str, lease: float, opt: StreamOptions,
                 claim_one: Callable[[], Prepared | None] | None) -> None:
        self.engine, self.scorer, self.worker, self.lease, self.opt = engine, scorer, worker, lease, opt
        self.preparing = _Preparing(scorer)
        self.claim_one = self._and_prepared(claim_one) if claim_one is not None else None
        self.outcomes: list[JobOutcome] = []

    def _and_prepared(self, claim_one: Callable[[], Prepared | None]) -> Callable[[], Prepared | None]:
        """`claim_one`, and the claimed job's first batch tokenized beside the current job's end."""
        def claim() -> Prepared | None:
            job = claim_one()
            if job is not None and job.batches:
                self.preparing.start(job.batches[0])
            return job
        return claim

    def _ended(self, outcome: JobOutcome) -> None:
        self.outcomes.append(outcome)
        if self.opt.on_outcome:
            self.opt.on_outcome(outcome)

    def _end(self, job: _Running | None) -> None:
        """Wait for the commit of `job`'s last batch (normally made already) and record its outcome."""
        if job is not None:
            with phase("DB writes"):
                self._ended(job.finish())

    def _give_back(self, job: Prepared, why: str) -> None:
        """A job claimed ahead that will not be scored here: queued again, no attempt charged."""
        release(self.engine, job.job_id, self.worker, error=why, count_attempt=False, settings=self.opt.settings)
        self._ended(JobOutcome(job.job_id, Outcome.RELEASED, model=job.model))

    def _ahead(self) -> _Ahead | None:
        if self.claim_one is None or self.opt.stopping():
            return None
        return _Ahead(self.claim_one)

    def run(self, first: Prepared) -> list[JobOutcome]:
        current: Prepared | None = first
        ending: _Running | None = None  # the job before, its last batch still being committed
        running: _Running | None = None
        ahead: _Ahead | None = None
        try:
            while current is not None:
                running = _Running(self.engine, current, self.scorer, self.worker, self.lease, self.opt)
                ahead = self._ahead() if not current.batches else None
                try:
                    for i, requests in enumerate(current.batches):
                        last = i == len(current.batches) - 1
                        if i == max(len(current.batches) - AHEAD_BATCHES, 0):  # claimed and read meanwhile
                            ahead = self._ahead()
                        with phase("scoring"):
                            self.preparing.wait(requests)  # tokenized beside the batch before
                            if not last:
                                self.preparing.start(current.batches[i + 1])
                            results = _score_batch(self.scorer, requests, self.opt.on_computed, current.tokens)
                        self._end(ending)  # its commit before this job's first: ≤ BATCHES_IN_FLIGHT
                        ending = None
                        with phase("DB writes"):
                            running.writer.put(results, last=last)
                        running.report()
                except Exception as exc:  # noqa: BLE001 - this job's failure; the stream goes on
                    self._end(ending)
                    ending = None
                    self._ended(running.fail(exc))
                else:
                    self._end(ending)  # still open after a job with no batch
                    ending = running
                running, current = None, None
                if ahead is not None:
                    with phase("next job"):
                        current = ahead.result()
                    ahead = None
                    if current is not None and self.opt.stopping():  # never starved: back in the queue
                        self._end(ending)  # the outcomes in job order
                        ending = None
                        self._give_back(current, "the worker stopped before starting it")
                        current = None
            self._end(ending)
            ending = None
        except BaseException:  # Ctrl-C, a cold stop: every job held here goes back, uncharged
            for held in (ending, running):
                if held is not None:
                    held.interrupt()
            claimed = ahead.result() if ahead is not None else current if running is None else None
            if claimed is not None:
                self._give_back(claimed, "interrupted")
            raise
        return self.outcomes
