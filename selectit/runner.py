"""Running jobs: the one code path behind `selectit score` and the Celery workers.

A runner claims a job with a lease (`selectit.leases`), scores the job's cells that are still
missing in small committed batches through a `ScoringEngine`, renewing the lease after each
batch, and marks the job done. A killed runner loses at most one batch; nothing is written twice
(`selectit.cells`).

No torch here: the engine comes from `scorer_for` (by default `$SELECTIT_SCORER`, see
`default_scorer_factory`), so this module imports without it.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from selectit import db
from selectit.cells import cells_to_score, write_results
from selectit.contract import (CellResult, JobStatus, ModelSpec, RatingRequest, ScoringEngine, render,
                               split_on_failure)
from selectit.leases import claim, heartbeat, release, requeue_expired, worker_id
from selectit.planner import missing_cells, open_jobs_in_scope, plan, resolve_scope, total_cells
from selectit.schema import LLM, Job, JobSample, Prompt, Sample, utcnow
from selectit.settings import Settings, SettingsError, variable

if TYPE_CHECKING:
    from selectit.engines import EngineOptions

#: A model version → its loaded scoring engine.
ScorerFor = Callable[[ModelSpec], ScoringEngine]


class Outcome(StrEnum):
    """What became of one `run_job` call."""

    DONE = "done"  # every cell of the job is scored (ok, or failed)
    SKIPPED = "skipped"  # not claimable: done, or held by another worker
    RETRY = "retry"  # an error; the job is back in the queue for its next attempt
    FAILED = "failed"  # an error on its last attempt; the job is failed
    LOST = "lost"  # the lease expired and another worker took the job over


@dataclass
class JobOutcome:
    job_id: int
    status: Outcome
    scored: int = 0  # ok cells written
    failed: int = 0  # failed cells written
    error: str | None = None


def _requests(session: Session, cells: dict[int, list[int]], prompts: dict[int, Prompt]) -> list[RatingRequest]:
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


def _score_batch(scorer: ScoringEngine, requests: Sequence[RatingRequest]) -> list[CellResult]:
    """Score a batch; where the engine raises, isolate the requests that fail on their own."""
    def per_request(reqs: list[RatingRequest]) -> list[list[CellResult]]:
        owner = {(r.sample_id, p): i for i, r in enumerate(reqs) for p in r.prompt_ids}
        grouped: list[list[CellResult]] = [[] for _ in reqs]
        for cell in scorer.score(reqs):
            grouped[owner[cell.sample_id, cell.prompt_id]].append(cell)
        return grouped

    results: list[CellResult] = []
    for req, cells, err in split_on_failure(requests, per_request):
        results.extend(cells if err is None else (CellResult.failed(req.sample_id, p, err) for p in req.prompt_ids))
    return results


def _after_error(status: JobStatus | None) -> Outcome:
    return Outcome.FAILED if status == JobStatus.FAILED else Outcome.RETRY


def run_job(engine: Engine, job_id: int, scorer_for: ScorerFor, worker: str, *,
            on_cells: Callable[[int, int], None] | None = None,
            settings: Settings | None = None, lease: float | None = None,
            batch_size: int | None = None) -> JobOutcome:
    """Claim job `job_id`, score its still-missing cells in committed batches, mark it done.

    `scorer_for(model)` gives the (cached) engine of a model version; it is called before the
    claim, so a slow model load does not eat the lease. `on_cells(ok, failed)` is called after
    each committed batch. Safe to call for a job that is done or held by another worker: it
    returns `Outcome.SKIPPED` and scores nothing. `lease` and `batch_size` override `settings`.
    """
    settings = settings or Settings.from_env()
    lease = settings.lease_seconds if lease is None else lease
    batch_size = batch_size or settings.batch_size
    with db.session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.QUEUED:
            return JobOutcome(job_id, Outcome.SKIPPED)
        model = session.get(LLM, job.model_id)
    try:
        scorer = scorer_for(ModelSpec.of(model))
    except Exception as exc:  # noqa: BLE001 - recorded on the job, retried up to its limit
        if claim(engine, job_id, worker, lease=lease):
            status = release(engine, job_id, worker, settings=settings,
                             error=f"loading model {model.name}: {type(exc).__name__}: {exc}")
            return JobOutcome(job_id, _after_error(status), error=str(exc))
        return JobOutcome(job_id, Outcome.SKIPPED)
    if not claim(engine, job_id, worker, lease=lease):
        return JobOutcome(job_id, Outcome.SKIPPED)
    outcome = JobOutcome(job_id, Outcome.DONE)
    try:
        with db.session_scope(engine) as session:
            job = session.get(Job, job_id)
            cells = cells_to_score(session, job, settings.max_cell_attempts)
            prompts = {p.id: p for p in session.scalars(sa.select(Prompt).where(Prompt.id.in_(job.prompt_ids)))}
        sample_ids = list(cells)
        for start in range(0, len(sample_ids), batch_size):
            batch = {s: cells[s] for s in sample_ids[start:start + batch_size]}
            with db.session_scope(engine) as session:
                requests = _requests(session, batch, prompts)
            results = _score_batch(scorer, requests)
            with db.session_scope(engine) as session:
                write_results(session, job.model_id, results, worker, scorer.engine, scorer.engine_version)
                still_ours = heartbeat(session, job_id, worker, lease)
            n_failed = sum(1 for r in results if not r.ok)
            outcome.scored += len(results) - n_failed
            outcome.failed += n_failed
            if on_cells:
                on_cells(len(results) - n_failed, n_failed)
            if not still_ours:
                outcome.status = Outcome.LOST
                return outcome
        with db.session_scope(engine) as session:
            res = session.execute(sa.update(Job).where(Job.id == job_id, Job.worker == worker,
                                                       Job.status == JobStatus.RUNNING)
                                  .values(status=str(JobStatus.DONE), finished_at=utcnow(), lease_expires_at=None))
            if res.rowcount == 1:
                session.execute(sa.delete(JobSample).where(JobSample.job_id == job_id))
            else:
                outcome.status = Outcome.LOST
    except KeyboardInterrupt:
        release(engine, job_id, worker, error="interrupted", count_attempt=False, settings=settings)
        raise
    except Exception as exc:  # noqa: BLE001 - the job goes back to the queue (bounded)
        status = release(engine, job_id, worker, error=f"{type(exc).__name__}: {exc}", settings=settings)
        outcome.status = _after_error(status)
        outcome.error = f"{type(exc).__name__}: {exc}"
    return outcome


# --------------------------------------------------------------------------------------------
# Scoring engines
# --------------------------------------------------------------------------------------------


def default_scorer_factory(settings: Settings | None = None,
                           engine_options: EngineOptions | None = None) -> ScorerFor:
    """`$SELECTIT_SCORER` (`module:callable`, model version → engine), by default
    `selectit.engines:load_engine`: the torch or the vLLM engine, as `engine_options` (default:
    `$SELECTIT_ENGINE` and friends) say.

    The hook lets a deployment plug in another scoring backend (and the tests inject faults);
    `selectit score` and the Celery workers both go through it.
    """
    spec = (settings or Settings.from_env()).scorer
    if spec == Settings.scorer:
        from selectit.engines import load_engine

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
    """`scorer_for` that loads each model version once per process (by model id)."""

    def __init__(self, load: ScorerFor | None = None, settings: Settings | None = None) -> None:
        self._load = load
        self._settings = settings
        self.scorers: dict[int, ScoringEngine] = {}

    def __call__(self, model: ModelSpec) -> ScoringEngine:
        if model.id not in self.scorers:
            if self._load is None:
                self._load = default_scorer_factory(self._settings)
            self.scorers[model.id] = self._load(model)
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


class ScoreProgress(Protocol):
    """What `score_in_process` reports while it runs (the CLI draws a progress bar from it)."""

    def start(self, total: int) -> None:
        """`total` cells are missing in the scope."""

    def advance(self, cells: int) -> None:
        """`cells` more cells were written (ok or failed)."""

    def note(self, text: str) -> None:
        """Something worth a line: waiting for other workers, a failed job."""


@dataclass
class ScoreSummary:
    scored: int = 0  # ok cells written by this run
    failed: int = 0  # failed cells written by this run
    skipped: int = 0  # cells in scope already scored (or failed at the attempt limit) before the run
    jobs: int = 0  # jobs this run completed
    forwards: int = 0
    interrupted: bool = False


def score_in_process(engine: Engine, *, dataset: str | None = None, model: str | None = None,
                     prompt_set: str | None = None, progress: ScoreProgress | None = None,
                     batch_size: int | None = None, scorer_for: ScorerFor | None = None,
                     worker: str | None = None, poll: float = 1.0,
                     settings: Settings | None = None, engine_options: EngineOptions | None = None) -> ScoreSummary:
    """Plan the missing cells of the scope and run the jobs here, through `run_job`.

    Jobs left `running` by a killed run on this host are taken over at once (their `host:pid`
    is dead); jobs held by live workers elsewhere are waited for, and taken over if their lease
    expires. Ctrl-C puts the current job back in the queue and returns with `interrupted`.
    """
    settings = settings or Settings.from_env()
    worker = worker or worker_id()
    # A bad $SELECTIT_SCORER fails here, before any job is claimed.
    cache = scorer_for if scorer_for is not None else ScorerCache(default_scorer_factory(settings, engine_options))
    summary = ScoreSummary()
    with db.session_scope(engine) as session:
        scope = resolve_scope(session, dataset=dataset, model=model, prompt_set=prompt_set)
        n_missing = sum(len(r.prompt_ids) for r in missing_cells(session, scope, settings=settings))
        summary.skipped = total_cells(session, scope) - n_missing
    requeue_expired(engine, settings)
    plan(engine, dataset=dataset, model=model, prompt_set=prompt_set, settings=settings)
    if progress:
        progress.start(n_missing)

    def on_cells(ok: int, failed: int) -> None:
        summary.scored += ok
        summary.failed += failed
        if progress:
            progress.advance(ok + failed)

    try:
        tried: set[int] = set()
        while True:
            with db.session_scope(engine) as session:
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
                              settings=settings)
                if out.status == Outcome.DONE:
                    summary.jobs += 1
                elif out.status == Outcome.RETRY:
                    tried.discard(job_id)  # give it its next attempt in this run
                elif out.status == Outcome.FAILED and out.error and progress:
                    progress.note(f"job {job_id} failed: {out.error}")
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.forwards = getattr(cache, "forwards", 0)
        if scorer_for is None:  # the engines this run loaded end with it
            cache.close()
    return summary
