"""Running jobs: the one code path behind `selectit score` and the Celery workers.

A runner claims a job with a lease (`selectit.jobs.leases`), scores the job's cells that are still
missing in small batches through a `ScoringEngine` while a writer thread commits the batches
already scored and renews the lease after each (`BatchWriter`), and marks the job done; the scoring
loop, and the fleet's streams of jobs claimed while the one before ends, are
`selectit.jobs.pipeline`. A killed runner loses at most `BATCHES_IN_FLIGHT` batches; nothing is
written twice (`selectit.jobs.cells`).

No torch here: the engine comes from `scorer_for` (by default `$SELECTIT_SCORER`, see
`default_scorer_factory`), so this module imports without it.
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from selectit.contract import CellResult, JobStatus, ModelSpec, RatingRequest, ScoringEngine, Turns
from selectit.errors import ModelLoadError
from selectit.jobs.leases import requeue_expired, worker_id
from selectit.jobs.pipeline import (  # noqa: F401 - BatchWriter, mark_done, … re-exported
    BATCHES_IN_FLIGHT,
    BatchWriter,
    JobOutcome,
    OnComputed,
    Outcome,
    ScorerFor,
    StreamOptions,
    mark_done,
    run_stream,
)
from selectit.jobs.planner import (
    failed_cells,
    missing_cells,
    open_jobs_in_scope,
    plan,
    reset_failed,
    resolve_scope,
    total_cells,
)
from selectit.jobs.progress import ScoreProgress, TqdmProgress, with_tokens  # noqa: F401 - re-exported
from selectit.settings import DEFAULT_SETTINGS, Settings, SettingsError, variable
from selectit.store import db
from selectit.store.schema import LLM, utcnow
from selectit.timing import phase

if TYPE_CHECKING:
    from selectit.scoring.engines import EngineOptions

def run_job(engine: Engine, job_id: int, scorer_for: ScorerFor, worker: str, *,
            on_cells: Callable[[int, int], None] | None = None,
            on_computed: OnComputed | None = None,
            settings: Settings = DEFAULT_SETTINGS, lease: float | None = None,
            batch_size: int | None = None) -> JobOutcome:
    """Claim job `job_id`, score its still-missing cells in committed batches, mark it done: a
    stream of one job (`selectit.jobs.pipeline.run_stream`; the fleet's workers go on with the
    next job of the model version, claimed while this one ends).

    `scorer_for(model)` gives the (cached) engine of a model version; it is called before the
    claim, so a slow model load does not eat the lease. Batches are written (with the lease
    renewal) by a `BatchWriter` beside the scorer; a killed runner loses at most
    `BATCHES_IN_FLIGHT` batches. `on_computed(n, tokens)` is called as the engine finishes cells (a
    progress bar that moves per request; `tokens`: their planner tokens, which time what is left),
    `on_cells(ok, failed)`, on this thread, for each committed batch. Safe to call for a job that
    is done or held by another worker: it returns `Outcome.SKIPPED` and scores nothing. `lease` and `batch_size` override `settings`.

    A model that cannot be loaded (a missing key, an unreachable server, a tokenizer) is no fault of
    the job's cells: the job is not claimed, keeps its attempts and stays queued with the error
    noted, and the outcome is `Outcome.LOAD_FAILED`.
    """
    options = StreamOptions(settings=settings, lease=lease, batch_size=batch_size, on_cells=on_cells,
                            on_computed=on_computed)
    (outcome,) = run_stream(engine, job_id, scorer_for, worker, options)
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

    def prepare(self, requests: Sequence[RatingRequest]) -> None:
        prepare = getattr(self.inner, "prepare", None)  # optional, as for every engine
        if prepare is not None:
            prepare(requests)

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
        n_tokens = sum(r.est_tokens for r in rows)  # what the jobs' cells report as they are computed
        summary.skipped = total_cells(session, scope) - n_missing - failed_cells(session, scope, settings).exhausted
        to_load = [ModelSpec.of(m) for m in session.scalars(
            sa.select(LLM).where(LLM.id.in_({r.model_id for r in rows})).order_by(LLM.id))]

    def on_cells(ok: int, failed: int) -> None:
        summary.scored += ok
        if progress:
            progress.advance(ok + failed)

    if progress:
        with_tokens(progress.start)(n_missing, n_tokens)
    on_computed = with_tokens(progress.computed) if progress else None
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
                              on_computed=on_computed, settings=settings)
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
