"""The cells of a job: which are still owed, the requests that rate them, and storing their results.

A cell is (sample, model version, prompt version, turn, rendering version); its row in `scores` is written
insert-or-ignore, except that a stored *failed* cell is overwritten in place with attempts + 1.
So a cell scored ok is never written twice, whoever computes it again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from selectit.contract import (
    RENDERING,
    CellResult,
    CellStatus,
    Layout,
    RatingRequest,
    RenderedPrompt,
    history_cuts,
    render,
    render_transcript,
    render_turn,
    shares_turns,
)
from selectit.jobs.planner import ALL_TURNS, CHARS_PER_TOKEN, one_pass
from selectit.store import db
from selectit.store.schema import MAX_SCALE, Job, JobSample, Prompt, Sample, Score, utcnow


def cells_to_score(session: Session, job: Job, max_cell_attempts: int) -> dict[tuple[int, int], list[int]]:
    """{(sample_id, turn): [prompt_id, …]} of the job's cells neither scored ok nor failed at the
    limit: at the job's turn, or at every turn of its samples (`ALL_TURNS`), a sample's turns
    together, latest first."""
    every = job.turn == ALL_TURNS
    q = (sa.select(Score.sample_id, Score.turn, Score.prompt_id)
         .join(JobSample, sa.and_(JobSample.job_id == job.id, JobSample.sample_id == Score.sample_id))
         .where(Score.model_id == job.model_id, Score.prompt_id.in_(job.prompt_ids), Score.rendering == RENDERING,
                sa.or_(Score.status == CellStatus.OK, Score.attempts >= max_cell_attempts)))
    done = set(session.execute(q if every else q.where(Score.turn == job.turn)).all())
    n_turns = dict(session.execute(sa.select(Sample.id, Sample.n_turns).where(Sample.id.in_(job.sample_ids)))
                   .all()) if every else {}
    cells: dict[tuple[int, int], list[int]] = {}
    for s in job.sample_ids:
        for t in range(n_turns.get(s, 1)) if every else (job.turn,):
            missing = [p for p in job.prompt_ids if (s, t, p) not in done]
            if missing:
                cells[s, t] = missing
    return cells


def requests_for(session: Session, cells: dict[int, list[int]] | dict[tuple[int, int], list[int]],
                 prompts: dict[int, Prompt], turn: int = 0) -> list[RatingRequest]:
    """The requests that rate `cells` ({sample_id: [prompt_id, …]} at `turn`, or {(sample_id,
    turn): …}): one per sample's turn and (layout, scale), since a request's prompts share both."""
    owed = {(k if isinstance(k, tuple) else (k, turn)): v for k, v in cells.items()}
    samples = {s.id: s for s in session.scalars(sa.select(Sample).where(Sample.id.in_({s for s, _ in owed})))}
    requests = []
    for (sid, turn), pids in owed.items():
        groups: dict[tuple[str, int], list[int]] = {}
        for p in pids:
            groups.setdefault((prompts[p].layout, prompts[p].scale), []).append(p)
        for (layout, scale), group in groups.items():
            templates = [(layout, prompts[p].template) for p in group]
            requests.append(RatingRequest(sample_id=sid, prompt_ids=tuple(group), scale=scale, turn=turn,
                                          **turn_prompts(samples[sid], turn, templates)))
    return requests


def planned_tokens(session: Session, cells: dict[tuple[int, int], list[int]],
                   prompts: dict[int, Prompt]) -> dict[tuple[int, int, int], int]:
    """(sample_id, turn, prompt_id) → the cell's prompt tokens as the planner counts them (the
    measure of the jobs' `est_tokens`, in which the progress bar times what is left): (sample +
    template characters) // 4, except that a conversation scored in one pass (`planner.one_pass`,
    shared-context prompts) counts its earlier turns by their template alone."""
    lengths = {sid: (n_chars, n_turns) for sid, n_chars, n_turns in session.execute(
        sa.select(Sample.id, Sample.n_chars, Sample.n_turns).where(Sample.id.in_({s for s, _ in cells})))}
    owed: dict[int, list[tuple[int, list[int]]]] = {}
    for (s, t), pids in cells.items():
        owed.setdefault(s, []).append((t, pids))
    out: dict[tuple[int, int, int], int] = {}
    for s, turns in owed.items():
        n_chars, n_turns = lengths[s]
        shared = one_pass(turns, n_turns) and all(prompts[p].layout == Layout.SHARED_CONTEXT for p in turns[0][1])
        for t, pids in turns:
            for p in pids:
                template = len(prompts[p].template)
                out[s, t, p] = (template if shared and t else n_chars + template) // CHARS_PER_TOKEN
    return out


def turn_prompts(sample: Sample, turn: int, templates: list[tuple[str, str]]) -> dict[str, Any]:
    """A request's `prompts` for `turn` of `sample`, and its history cuts (`RatingRequest.shorter`).

    Turn 0 of any sample is its stored fields, as it always was; an earlier turn is rendered from
    `samples.turns` by the same rule (its context the conversation before it, no Alpaca input).
    A conversation of several rated turns in the shared-context layout is a transcript instead
    (`render_transcript`, rendering version `RENDERING`): turn t's tokens are a prefix of turn
    t+1's, so an engine scores all its turns in one pass.
    """
    conv = sample.turns

    def rendered(drop: int) -> tuple[RenderedPrompt, ...]:
        if conv is not None and all(shares_turns(layout, sample.n_turns) for layout, _ in templates):
            return tuple(render_transcript(template, conv, turn, drop=drop) for _, template in templates)
        if drop == 0 and turn == 0:
            instruction, output = sample.instruction, sample.output
        else:
            instruction, output = render_turn(conv, turn, drop=drop)
        inp = sample.input if turn == 0 else ""
        return tuple(render(layout, template, instruction, inp, output) for layout, template in templates)

    if conv is None:
        if turn:
            raise ValueError(f"sample {sample.id} has no turn {turn}: it has one rated turn")
        return {"prompts": rendered(0)}
    return {"prompts": rendered(0), "n_shorter": history_cuts(conv, turn), "shorter": rendered}


def write_results(session: Session, model_id: int, results: Sequence[CellResult], worker: str | None,
                  engine: str | None = None, engine_version: str | None = None) -> None:
    """Insert-or-ignore; a stored *failed* cell is overwritten in place with attempts + 1.

    `engine` and `engine_version` are the provenance of the results (see `Score.engine`).
    """
    if not results:
        return
    now = utcnow()
    rows = []
    for r in results:
        probs = list(r.probs or ())
        row = {"sample_id": r.sample_id, "model_id": model_id, "prompt_id": r.prompt_id, "turn": r.turn,
               "rendering": RENDERING,
               "mass": r.mass, "n_tokens": r.n_tokens, "truncated": bool(r.truncated),
               "partial": bool(r.ok and r.partial),
               "status": str(CellStatus.OK if r.ok else CellStatus.FAILED),
               "error": None if r.ok else (r.error or "no probabilities")[:2000],
               "attempts": 1, "scored_at": now, "worker": worker,
               "engine": engine, "engine_version": engine_version}
        for k in range(1, MAX_SCALE + 1):
            row[f"p{k}"] = probs[k - 1] if k <= len(probs) else None
        rows.append(row)
    if db.is_postgres(session.bind):
        # One statement per batch from one array per column: its text never changes, so it is
        # compiled once and prepared by the server after a few runs (a multi-row VALUES list
        # is compiled anew for every batch size; an executemany is a statement per row).
        session.execute(_PG_UPSERT, {c: [row[c] for row in rows] for c in _COLUMNS})
        return
    stmt = db.upsert(session, Score)  # SQLite: executemany of one statement, in-process
    keep = (*_KEY, "attempts")
    stmt = stmt.on_conflict_do_update(
        index_elements=list(_KEY),
        set_={**{c: stmt.excluded[c] for c in rows[0] if c not in keep}, "attempts": Score.attempts + 1},
        where=Score.status == CellStatus.FAILED)
    session.execute(stmt, rows)


#: (column, PostgreSQL array type) of a score row, in `write_results`' row order.
_COLUMNS = {"sample_id": "integer", "model_id": "integer", "prompt_id": "integer", "turn": "integer",
            "rendering": "integer",
            **{f"p{k}": "double precision" for k in range(1, MAX_SCALE + 1)},
            "mass": "double precision", "n_tokens": "integer", "truncated": "boolean", "partial": "boolean",
            "status": "text",
            "error": "text", "attempts": "integer", "scored_at": "timestamp", "worker": "text",
            "engine": "text", "engine_version": "text"}
_KEY = ("sample_id", "model_id", "prompt_id", "turn", "rendering")
_PG_UPSERT = sa.text(
    f"INSERT INTO scores ({', '.join(_COLUMNS)}) "
    f"SELECT * FROM unnest({', '.join(f'CAST(:{c} AS {t}[])' for c, t in _COLUMNS.items())}) "
    f"ON CONFLICT ({', '.join(_KEY)}) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS if c not in (*_KEY, "attempts"))
    + ", attempts = scores.attempts + 1 WHERE scores.status = 'failed'")
