"""The cost before scoring: per model version, the cells still missing, their prompt tokens, the
forwards, and an estimated time from the rate this store has recorded (reads only).

Prompt tokens come from the model's own tokenizer (each missing cell's prompt rendered and
counted, special tokens included), or — when the tokenizer cannot be loaded here, or
`tokenizer=False` — are estimated from characters (the planner's 4 characters per token);
`Estimate.tokens_from` says which. Either way a cell counts at most the model's context
(`max_tokens`): the scorer cuts a longer prompt to it. The estimate stays cheap on huge records:
each field is read from the database cut to `CUT_CHARS_PER_TOKEN × max_tokens` characters, and
no more than that of a prompt is tokenized (a head that short of the context is scaled up by the
prompt's length). Forwards are packed sequences: one per sample
and model (its missing prompts share one sequence; the engine batches several per pass). Cells of
every rated turn and of the last turns alone are counted apart (`score --turns all|last`). The
time is per token, not per cell (a cell of a 2,000-token conversation costs ten of a 200-token
instruction): the missing cells' tokens as the planner counts them (≈4 characters per token, the
measure each job's `throughput` row records; a conversation whose turns run in one pass counts its
transcript once, so a rate recorded on single-turn data times it too) ÷ the tokens/s of the model version's last finished
jobs on its engine (`throughput` rows, written when a job ends): the `openai` engine's for a
model registered with an endpoint (it is always scored by it), else the given engine's. Jobs
recorded without tokens fall back to their cells/s; without a record the time is None and the
text says so. `time_left` (`selectit status`) divides the same way.

    >>> import selectit
    >>> for e in selectit.open("selectit.db").estimate(dataset="alpaca"): print(e.line())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from selectit.contract import Turns, render
from selectit.jobs.cells import turn_prompts
from selectit.jobs.planner import CHARS_PER_TOKEN, missing_cells, resolve_scope
from selectit.settings import DEFAULT_SETTINGS, Settings
from selectit.store import db
from selectit.store.schema import LLM, Prompt, Sample, Throughput

#: How many of a model version's most recent finished jobs its rate is taken over.
RECENT_JOBS = 10
#: A prompt is tokenized from at most this many characters per token of the model's context:
#: ordinary text (prose, code, base64) holds far fewer characters per token, so the cut head alone
#: overflows the context; a head that does not is scaled up by the prompt's whole length.
CUT_CHARS_PER_TOKEN = 16
#: The engine that scores a model registered with an endpoint, whatever `--engine` says.
SERVED_ENGINE = "openai"


@dataclass(frozen=True)
class Estimate:
    """The cost of scoring one model version's missing cells."""

    model: str
    model_id: int
    engine: str
    cells: int  # missing (never scored, or failed below the attempt limit)
    samples: int  # samples with a missing cell
    tokens: int  # prompt tokens of the missing cells
    tokens_from: str  # "tokenizer" or "characters (≈4 per token)"
    forwards: int  # packed sequences: one per sample (and prompt layout/scale)
    cells_per_second: float | None  # the recorded rate, None without a record
    seconds: float | None  # the estimated time, None without a record
    last_cells: int = 0  # of `cells`, those of last assistant turns (`--turns last`)
    last_tokens: int = 0  # their prompt tokens
    #: the recorded rate in the planner's tokens (≈4 characters each) per second, None without one
    tokens_per_second: float | None = None
    planned_tokens: int = 0  # the missing cells' tokens as the planner counts them (the rate's measure)
    last_planned_tokens: int = 0  # of those, the last turns'
    #: samples of the scope without a near-duplicate signature cell (`score` computes them first)
    signatures_missing: int = 0
    #: samples of the scope without an embedding cell of this model's newest embedder (`selectit
    #: embed`); None when the model has none (it was never asked for embeddings)
    embeddings_missing: int | None = None

    def _seconds(self, cells: int, planned: int) -> float | None:
        if self.tokens_per_second:
            return planned / self.tokens_per_second
        return cells / self.cells_per_second if self.cells_per_second else None

    def line(self) -> str:
        if self.seconds is None:
            eta = f"no time: no {self.engine} run of {self.model} is recorded yet"
        elif self.tokens_per_second:
            eta = (f"about {duration(self.seconds)} at {self.tokens_per_second:,.0f} tokens/s (≈{CHARS_PER_TOKEN} "
                   f"characters each; {self.engine}, this store's last {RECENT_JOBS} jobs at most)")
        else:
            eta = (f"about {duration(self.seconds)} at {self.cells_per_second:.3g} cells/s "
                   f"({self.engine}, this store's last {RECENT_JOBS} jobs at most, recorded without tokens)")
        text = (f"{self.model}: {self.cells} cells missing over {self.samples} samples, {self.tokens:,} prompt tokens "
                f"({self.tokens_from}), {self.forwards} forwards; {eta}")
        if self.embeddings_missing:
            text += (f"\n{' ' * len(self.model)}  and {self.embeddings_missing} embedding cells "
                     f"(`selectit embed --model {self.model}`)")
        if self.last_cells == self.cells:  # one turn per sample (Alpaca data), or --turns last
            return text
        last_seconds = self._seconds(self.last_cells, self.last_planned_tokens)
        last = f", about {duration(last_seconds)}" if last_seconds is not None else ""
        return (f"{text}\n{' ' * len(self.model)}  with --turns last (last assistant turns only): {self.last_cells} "
                f"cells, {self.last_tokens:,} prompt tokens{last}; a conversation's turns run in one pass "
                f"(shared-context layout), or one request each (reference layout: no shared prefix)")


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def recorded_rate(session: sa.orm.Session, model_id: int, engine: str) -> float | None:
    """Cells per second over the model version's last `RECENT_JOBS` finished jobs on `engine`."""
    recent = (sa.select(Throughput.cells, Throughput.seconds)
              .where(Throughput.model_id == model_id, Throughput.engine == engine)
              .order_by(Throughput.recorded_at.desc(), Throughput.id.desc()).limit(RECENT_JOBS).subquery())
    cells, seconds = session.execute(sa.select(sa.func.sum(recent.c.cells), sa.func.sum(recent.c.seconds))).one()
    return float(cells) / float(seconds) if cells and seconds else None


def recorded_token_rate(session: sa.orm.Session, model_id: int, engine: str) -> float | None:
    """The planner's tokens per second over the model version's last `RECENT_JOBS` finished jobs on
    `engine` that recorded their tokens (None without one)."""
    recent = (sa.select(Throughput.tokens, Throughput.seconds)
              .where(Throughput.model_id == model_id, Throughput.engine == engine, Throughput.tokens > 0)
              .order_by(Throughput.recorded_at.desc(), Throughput.id.desc()).limit(RECENT_JOBS).subquery())
    tokens, seconds = session.execute(sa.select(sa.func.sum(recent.c.tokens), sa.func.sum(recent.c.seconds))).one()
    return float(tokens) / float(seconds) if tokens and seconds else None


def engine_of(model: LLM, scoring_engine: str) -> str:
    """The engine that scores `model`: the `openai` engine for a model served by an endpoint."""
    return SERVED_ENGINE if model.endpoint else scoring_engine


def missing_tokens(engine: Engine, dataset: str | None = None) -> dict[tuple[int, str], int]:
    """(model version id, prompt set) → the planner's tokens of its missing cells, of `dataset`'s
    samples or of every dataset (what the per-token times divide). Missing as `status` counts it:
    never scored (a failed cell is counted apart, not as work left)."""
    out: dict[tuple[int, str], int] = defaultdict(int)
    never_retried = dataclasses.replace(DEFAULT_SETTINGS, max_cell_attempts=0)
    with db.read_scope(engine) as session:
        scope = resolve_scope(session, dataset=dataset, strict=False)
        for r in missing_cells(session, scope, settings=never_retried):
            out[(r.model_id, r.set_name)] += r.est_tokens
        session.rollback()  # nothing to keep: a read
    return dict(out)


def time_left(engine: Engine, missing: dict[int, int], scoring_engine: str = "torch",
              dataset: str | None = None, tokens: dict[int, int] | None = None) -> dict[int, str]:
    """model version id → the time its `missing` cells take at its recorded rate ("–" without one):
    per token when its jobs recorded tokens (`tokens`: the missing cells' planner tokens per model
    version; counted here, of `dataset` or of every dataset, when not given), else per cell."""
    with db.read_scope(engine) as session:
        served = set(session.scalars(sa.select(LLM.id).where(LLM.id.in_(list(missing)), LLM.endpoint.is_not(None))))
        on = {m: SERVED_ENGINE if m in served else scoring_engine for m in missing}
        per_token = {m: recorded_token_rate(session, m, on[m]) for m in missing if missing[m]}
    if tokens is None and any(per_token.values()):
        tokens = defaultdict(int)
        for (m, _), n in missing_tokens(engine, dataset).items():
            tokens[m] += n
    tokens = tokens or {}
    with db.read_scope(engine) as session:
        seconds: dict[int, float | None] = {}
        for m, n in missing.items():
            rate = per_token.get(m)
            if rate and tokens.get(m):
                seconds[m] = tokens[m] / rate
            else:
                cells_rate = recorded_rate(session, m, on[m]) if n else None
                seconds[m] = n / cells_rate if cells_rate else None
        session.rollback()  # nothing to keep: a read
    return {m: ("0 s" if not n else duration(seconds[m]) if seconds[m] is not None else "–")
            for m, n in missing.items()}


def _token_counter(model: LLM):  # noqa: ANN202 - (counter of texts, or None)
    """The model's own tokenizer as `texts → token counts`, or None when it cannot be loaded here."""
    try:
        from selectit.scoring.loading import load_tokenizer, resolve_source

        tokenizer = load_tokenizer(resolve_source(model.source))
    except Exception:  # noqa: BLE001 - no tokenizer here (moved files, no transformers): estimate instead
        return None
    return lambda texts: [len(ids) for ids in tokenizer(list(texts))["input_ids"]]


def estimate(engine: Engine, *, dataset: str | None = None, model: str | None = None,
             prompt_set: str | None = None, scoring_engine: str = "torch", tokenizer: bool = True,
             chunk: int = 512, settings: Settings = DEFAULT_SETTINGS,
             turns: Turns | str = Turns.ALL) -> list[Estimate]:
    """Per active model version of the scope (`selectit score`'s): what scoring would cost, for the
    `turns` asked and for the last turns alone. Reads only."""
    from selectit.store import signatures

    with db.read_scope(engine) as session:
        scope = resolve_scope(session, dataset=dataset, model=model, prompt_set=prompt_set, turns=turns)
        rows = missing_cells(session, scope, settings=settings)
        models = {m.id: m for m in session.scalars(sa.select(LLM).where(LLM.id.in_(scope.model_ids)))}
        prompts = {p.id: p for p in session.scalars(sa.select(Prompt).where(Prompt.id.in_(scope.prompt_ids)))}
        by_model: dict[int, list] = defaultdict(list)
        for r in rows:
            by_model[r.model_id].append(r)
        out = []
        for model_id in scope.model_ids:
            mine = by_model.get(model_id, [])
            llm = models[model_id]
            count = _token_counter(llm) if tokenizer and mine else None
            if count is None:
                per_row = [min(r.est_tokens, len(r.prompt_ids) * llm.max_tokens) for r in mine]
                source = f"characters (≈{CHARS_PER_TOKEN} per token)"
            else:
                per_row, source = _count_tokens(session, mine, prompts, count, chunk, llm.max_tokens), "tokenizer"
            forwards = sum(len({(prompts[p].layout, prompts[p].scale) for p in r.prompt_ids}) for r in mine)
            name = engine_of(llm, scoring_engine)
            rate = recorded_rate(session, model_id, name)
            token_rate = recorded_token_rate(session, model_id, name)
            cells = sum(len(r.prompt_ids) for r in mine)
            last = [i for i, r in enumerate(mine) if r.turn == 0]
            planned = sum(r.est_tokens for r in mine)  # the measure the throughput rows record
            seconds = planned / token_rate if token_rate else (cells / rate if rate else None)
            out.append(Estimate(llm.name, model_id, name, cells, len({r.sample_id for r in mine}),
                                sum(per_row), source, forwards, rate, seconds,
                                sum(len(mine[i].prompt_ids) for i in last), sum(per_row[i] for i in last),
                                token_rate, planned, sum(mine[i].est_tokens for i in last),
                                0, _embeddings_missing(session, model_id, scope.dataset_ids)))
        session.rollback()  # nothing to keep: a read
    unsigned = signatures.count(engine, dataset)[1]  # cells of every kind: the cheap ones too
    return [dataclasses.replace(e, signatures_missing=unsigned) for e in out]


def _embeddings_missing(session: sa.orm.Session, model_id: int, dataset_ids: Sequence[int] | None) -> int | None:
    """Samples of the scope without an embedding cell of the model version's newest embedder (None:
    it has none)."""
    from selectit.store.schema import Embedder

    mine = [e.id for e in session.scalars(sa.select(Embedder)) if (e.config or {}).get("model_id") == model_id]
    if not mine:
        return None
    members = "SELECT sample_id FROM dataset_samples" + (
        f" WHERE dataset_id IN ({','.join(str(int(d)) for d in dataset_ids)})" if dataset_ids else "")
    return int(session.scalar(sa.text(
        f"SELECT count(*) FROM samples s WHERE s.id IN ({members}) AND NOT EXISTS (SELECT 1 FROM sample_embeddings e "
        "WHERE e.sample_id = s.id AND e.embedder_id = :e)"), {"e": max(mine)}) or 0)


def _count_tokens(session: sa.orm.Session, rows: Sequence, prompts: dict[int, Prompt],
                  count, chunk: int, max_tokens: int) -> list[int]:  # noqa: ANN001
    """Tokens of each row's missing cells' rendered prompts (its turn's), each cell at most
    `max_tokens`, read and counted `chunk` rows at a time. A last turn reads no field, and no prompt
    is tokenized, beyond `cut` characters; a turn before the last renders from the stored
    conversation (its prompt is then cut to `cut` characters before it is tokenized)."""
    cut = CUT_CHARS_PER_TOKEN * max_tokens
    fields = [sa.func.substr(c, 1, cut) for c in (Sample.instruction, Sample.input, Sample.output)]
    totals: list[int] = []
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        last = {sid: (i, x, o, n) for sid, i, x, o, n in session.execute(
            sa.select(Sample.id, *fields, Sample.n_chars).where(
                Sample.id.in_([r.sample_id for r in part if r.turn == 0])))}
        earlier = {s.id: s for s in session.scalars(sa.select(Sample).where(
            Sample.id.in_([r.sample_id for r in part if r.turn != 0])))}
        texts, lengths, owner = [], [], []
        for k, r in enumerate(part):
            if r.turn == 0:
                instruction, input, output, n_chars = last[r.sample_id]
                for p in r.prompt_ids:
                    text = render(prompts[p].layout, prompts[p].template, instruction, input, output).text
                    # the prompt's whole length: what the cut fields left out comes back
                    lengths.append(len(text) + n_chars - len(instruction) - len(input) - len(output))
                    texts.append(text[:cut])
                    owner.append(k)
            else:
                for rendered in turn_prompts(earlier[r.sample_id], r.turn,
                                             [(prompts[p].layout, prompts[p].template) for p in r.prompt_ids])["prompts"]:
                    lengths.append(len(rendered.text))
                    texts.append(rendered.text[:cut])
                    owner.append(k)
        part_totals = [0] * len(part)
        for k, n, length in zip(owner, count(texts), lengths):
            part_totals[k] += min(max_tokens, n if length <= cut else math.ceil(n * length / cut))
        totals += part_totals
    return totals
