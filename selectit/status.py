"""Scoring status, composed above the wings from the fusion's coverage and the jobs' counts
(`selectit.jobs.counts`): cells and jobs per active model version × active prompt set, progress
and ETA per model version, and throughput — of every dataset, or of one (`selectit status --dataset`).

Cell counts come from the fusion's one coverage computation (`selectit.fusion.coverage`, the
rule of `rank` and `report` too): a cell counts *done* iff its score row has status `ok`,
*failed* iff `failed`; every other cell of the scope is *missing*. A running job is *stalled*
when its holder is gone: its lease expired, or its `host:pid` is a dead process on this host.
Rates count the ok cells scored in the last minute and the last ten minutes (`scores.scored_at`,
indexed); a model version's ETA is its missing cells' tokens (the planner's, ≈4 characters each)
at the last ten minutes' tokens per second (`selectit.jobs.estimate`: a cell of a long
conversation takes longer than one of a short instruction). That rate is
over the part of the ten minutes that scoring covered (from its first cell in them, at least a
minute): a run that started two minutes ago is not taken for five times slower than it is.

    >>> for row in status_rows(engine, dataset="alpaca"): print(row.model, row.missing)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from selectit.contract import JobStatus
from selectit.jobs.counts import STALLED, cells_per_engine, job_counts, recent_cells
from selectit.jobs.estimate import missing_tokens
from selectit.store import db, lookups
from selectit.store.schema import utcnow

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
    recent_tokens: int = 0  # the planner's tokens (≈4 characters each) of the `recent` cells
    missing_tokens: int = 0  # … of the `missing` cells


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
    #: missing cells' tokens ÷ the last ten minutes' tokens per second (cells ÷ cells/s where no
    #: tokens are known); 0 when none is missing, None when no cell was scored in the last ten minutes
    eta_seconds: float | None
    eta: str = "–"  # eta_seconds as text (`Store.status` fills it)
    time_left: str = "–"  # at the rate of the model's last finished jobs (`Store.status` fills it)
    missing_tokens: int = 0  # the planner's tokens of the missing cells


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
        tokens, recent_tokens = sum(r.missing_tokens for r in mine), sum(r.recent_tokens for r in mine)
        # per token: a cell of a long conversation takes longer than one of a short instruction
        eta = 0.0 if not missing else (tokens * span / recent_tokens if tokens and recent_tokens
                                       else missing * span / recent if recent else None)
        out.append(ModelProgress(mine[0].model, model_id, sum(r.done for r in mine), missing,
                                 sum(r.failed for r in mine), round(recent_1m * 60.0 / short_window, 1),
                                 round(recent * 60.0 / span, 1), eta, missing_tokens=tokens))
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
    missing = missing_tokens(engine, dataset) if any(c.missing for c in cells) else {}
    with db.read_scope(engine) as session:
        recent = {(m, s): (n, n1, _span(first, now, window, short_window), int(tokens or 0))
                  for m, s, n, n1, first, tokens in session.execute(recent_cells(since, short_since, ds))}
        per_engine: dict[tuple[int, str], list[tuple[str, int]]] = {}
        for m, s, eng, n in session.execute(cells_per_engine(ds)):
            per_engine.setdefault((m, s), []).append((eng or "unknown", n))
        jobs_by_state = job_counts(session, now, ds)
    rows = []
    for c in cells:  # by model name, then prompt set
        def jobs(state: str, c=c) -> int:  # noqa: ANN001 - the loop's coverage row
            return jobs_by_state.get((c.model_id, c.prompt_set, state), 0)

        n, n1, span, tokens = recent.get((c.model_id, c.prompt_set), (0, 0, window, 0))
        rows.append(StatusRow(
            c.model, c.model_id, c.prompt_set, c.ok, c.missing, c.failed,
            jobs(JobStatus.QUEUED), jobs(JobStatus.RUNNING), jobs(STALLED), jobs(JobStatus.FAILED),
            round(n * 60.0 / span, 1), tuple(sorted(per_engine.get((c.model_id, c.prompt_set), ()))),
            round(n1 * 60.0 / short_window, 1), n, n1, span, c.missing_earlier, tokens,
            missing.get((c.model_id, c.prompt_set), 0) if c.missing else 0))
    return rows


def _span(first: dt.datetime, now: dt.datetime, window: float, short_window: float) -> float:
    """Seconds of the window that scoring covered: from its first cell in it to now, at least
    `short_window` (a few cells a moment ago are no rate), at most `window`."""
    return min(window, max(short_window, (now - first).total_seconds()))
