"""The DuckDB fusion: numbers worked by hand, tie rule, coverage, weights, read-only SQL, exports.

Every database test runs on SQLite and on PostgreSQL (the `engine`/`cli` fixtures). Score rows
are inserted directly; the fixture is 3 samples × 2 models × 3 prompts on the scale K = 3, with
probabilities that are exact binary fractions so the paper formula's numbers are exact.
"""

from __future__ import annotations

import json
import math
import random

import pytest
import sqlalchemy as sa

from selectit.ranking import Ranking
from selectit.fusion import views as fusion
from selectit.io.ingest import content_hash, ingest_file
from selectit.store.db import session_scope
from selectit.store.schema import LLM, Dataset, DatasetSample, Prompt, Sample, Score

# ---------------------------------------------------------------------------------------------
# Five kinds of cell on the scale K = 3 (p1, p2, p3), worked by hand.
#   paper:  P'_k = p_k / Σp;  S_base = argmax (ties → smaller k);  S_token = S_base·½·Σ|P'_k − P'_max|
#   T1 (1/8, 1/4, 1/8): Σ=1/2, P'=(¼,½,¼), S_base=2, Σ|·|=¼+0+¼=½, S_token = 2·½·½ = 0.5
#   T2 (0, 0, 1/2):     Σ=1/2, P'=(0,0,1),  S_base=3, Σ|·|=1+1+0=2,  S_token = 3·½·2 = 3.0
#   T3 (1/4, 1/8, 1/8): Σ=1/2, P'=(½,¼,¼), S_base=1, Σ|·|=0+¼+¼=½, S_token = 1·½·½ = 0.25
#   T4 (1/4, 1/4, 0):   Σ=1/2, P'=(½,½,0), tie → S_base=1, Σ|·|=0+0+½=½, S_token = 1·½·½ = 0.25
#   T5 (1/8, 1/8, 1/4): Σ=1/2, P'=(¼,¼,½), S_base=3, Σ|·|=¼+¼+0=½, S_token = 3·½·½ = 0.75
# reference-code: P'_k = softmax(p_k/Σp); with a = e^¼, b = e^½, e = e^1:
#   T1 P'=(a,b,a)/(2a+b), S_base=2: S_token = 2·½·2(b−a)/(2a+b) = 2(b−a)/(2a+b)
#   T2 P'=(1,1,e)/(2+e),  S_base=3: S_token = 3·½·2(e−1)/(2+e)  = 3(e−1)/(2+e)
#   T3 P'=(b,a,a)/(b+2a), S_base=1: S_token = 1·½·2(b−a)/(b+2a) = (b−a)/(b+2a)
#   T4 P'=(b,b,1)/(2b+1), S_base=1: S_token = 1·½·(b−1)/(2b+1)
#   T5 P'=(a,a,b)/(2a+b), S_base=3: S_token = 3·½·2(b−a)/(2a+b) = 3(b−a)/(2a+b)
# ---------------------------------------------------------------------------------------------
T1, T2, T3, T4, T5 = (0.125, 0.25, 0.125), (0.0, 0.0, 0.5), (0.25, 0.125, 0.125), (0.25, 0.25, 0.0), (0.125, 0.125, 0.25)
_a, _b, _e = math.exp(0.25), math.exp(0.5), math.e
S_TOKEN = {
    "paper": {T1: 0.5, T2: 3.0, T3: 0.25, T4: 0.25, T5: 0.75},
    "reference-code": {
        T1: 2 * (_b - _a) / (2 * _a + _b),  # ≈ 0.172974
        T2: 3 * (_e - 1) / (2 + _e),  # ≈ 1.092526
        T3: (_b - _a) / (_b + 2 * _a),  # ≈ 0.086487
        T4: 0.5 * (_b - 1) / (2 * _b + 1),  # ≈ 0.075478
        T5: 3 * (_b - _a) / (2 * _a + _b),  # ≈ 0.259461
    },
}
S_BASE = {"paper": {T1: 2, T2: 3, T3: 1, T4: 1, T5: 3}}

# sample → model → the cells of prompts 0, 1, 2.  θ_A = 100, θ_B = 300 (n_params): shares ¼, ¾.
CELLS = {
    "s1": {"A": (T1, T1, T1), "B": (T3, T3, T3)},
    "s2": {"A": (T2, T3, T3), "B": (T5, T4, T1)},
    "s3": {"A": (T4, T5, T1), "B": (T2, T2, T2)},
}
THETA = {"A": 100, "B": 300}


def s_sent(tokens: tuple[float, ...], alpha: float) -> float:
    """mean / (1 + α·std_pop), written out (the test's own arithmetic, not the SQL's)."""
    mean = sum(tokens) / len(tokens)
    std = math.sqrt(sum((t - mean) ** 2 for t in tokens) / len(tokens))
    return mean / (1 + alpha * std)


# The paper formula at α = 0.2, by hand:
#   s1: A (.5,.5,.5) → std 0 → 0.5;  B (.25,.25,.25) → 0.25;  S_model = ¼·0.5 + ¾·0.25 = 0.3125
#   s2: A (3,.25,.25): mean 7/6, var ((11/6)²+2(11/12)²)/3 = 726/432, std = 1.2963624 →
#       (7/6)/(1+0.2·1.2963624) = 0.9264609;  B (.75,.25,.5): mean .5, std √(1/24) = 0.2041241 →
#       0.5/1.0408248 = 0.4803882;  S_model = ¼·0.9264609 + ¾·0.4803882 = 0.5919064
#   s3: A (.25,.75,.5) → 0.4803882;  B (3,3,3) → 3;  S_model = ¼·0.4803882 + ¾·3 = 2.3700971
#   ranking: s3 (2.3701), s2 (0.5919), s1 (0.3125)
PAPER_02 = {"s1": 0.3125, "s2": 0.25 * (7 / 6) / (1 + 0.2 * math.sqrt(726 / 432)) + 0.75 * 0.5 / (1 + 0.2 * math.sqrt(1 / 24)),
            "s3": 0.25 * 0.5 / (1 + 0.2 * math.sqrt(1 / 24)) + 0.75 * 3.0}


def seed(engine: sa.Engine, cells: dict = CELLS, *, scale: int = 3, n_prompts: int = 3, failed: set = frozenset(),
         weights: dict | None = None, positions: dict | None = None, dataset: str = "d") -> dict[str, int]:
    """Insert a dataset, models A/B, a prompt set 's', samples and score cells; return name → id.

    `cells[sample][model]` lists the p-tuples of prompts 0..n−1 (None = never scored);
    `failed` holds (sample, model, prompt index) cells stored as status 'failed'.
    """
    ids: dict[str, int] = {}
    models = sorted({m for per in cells.values() for m in per})
    with session_scope(engine) as s:
        # 's' is the only prompt set: drop the built-in one the migrations stored (none scored yet).
        s.execute(sa.delete(Prompt).where(Prompt.set_name == "default", ~Prompt.id.in_(sa.select(Score.prompt_id))))
        ds = Dataset(name=dataset, source="test")
        s.add(ds)
        for m in models:
            llm = LLM(name=m, source="test", fingerprint=m * 8, dtype="float32", n_params=THETA.get(m, 100),
                      weight=(weights or {}).get(m), label_ids={"shared-context": [1, 2, 3]}, max_tokens=512)
            s.add(llm)
        prompts = [Prompt(set_name="s", position=i, layout="shared-context", template=f"Rate {i}: ",
                          text_hash=f"{i:064x}", scale=scale) for i in range(n_prompts)]
        s.add_all(prompts)
        s.flush()
        ids.update({f"model:{m.name}": m.id for m in s.scalars(sa.select(LLM))})
        ids.update({f"prompt:{p.position}": p.id for p in prompts})
        for i, name in enumerate(cells):
            sample = Sample(content_hash=content_hash(f"Instruction {name}", "", f"Output {name} ✓"),
                            instruction=f"Instruction {name}", input="", output=f"Output {name} ✓", n_chars=20)
            s.add(sample)
            s.flush()
            ids[name] = sample.id
            s.add(DatasetSample(dataset_id=ds.id, sample_id=sample.id, position=(positions or {}).get(name, i)))
            for m, per_prompt in cells[name].items():
                for j, p in enumerate(per_prompt):
                    key = dict(sample_id=sample.id, model_id=ids[f"model:{m}"], prompt_id=prompts[j].id)
                    if (name, m, j) in failed:
                        s.add(Score(**key, status="failed", error="CUDA out of memory"))
                    elif p is not None:
                        s.add(Score(**key, **{f"p{k + 1}": v for k, v in enumerate(p)}, mass=sum(p),
                                    n_tokens=50, status="ok"))
    return ids


def url_of(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def ranking(con, dataset: str = "d") -> list[tuple[int, int, float]]:
    return con.execute(
        f"SELECT sample_id, rank, s_model FROM ranking WHERE dataset = '{dataset}' ORDER BY rank"
    ).fetchall()


# ------------------------------------------------------------------------------------ numbers
@pytest.mark.parametrize("formula", ["paper", "reference-code"])
@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_fusion_numbers_worked_by_hand(engine, formula: str, alpha: float) -> None:
    ids = seed(engine)
    con = fusion.connect(url_of(engine), Ranking(alpha=alpha, formula=formula, prompt_set="s"))
    try:
        token = {(r[0], r[1], r[2]): r[3:] for r in con.execute(
            "SELECT sample_id, model, position, s_base, s_token, s_token_paper, s_token_reference FROM token_scores"
        ).fetchall()}
        sent = {(r[0], r[1]): (r[2], r[3]) for r in con.execute(
            "SELECT sample_id, model, n_prompts, s_sent FROM sentence_scores").fetchall()}
        model = {r[0]: (r[1], r[2]) for r in con.execute("SELECT sample_id, n_models, s_model FROM model_scores").fetchall()}
        ranked = ranking(con)
    finally:
        con.close()
    assert len(token) == 18 and len(sent) == 6 and len(model) == 3
    expected_model = {}
    for name, per_model in CELLS.items():
        sid = ids[name]
        total = 0.0
        for m, cells in per_model.items():
            tokens = tuple(S_TOKEN[formula][c] for c in cells)
            for j, c in enumerate(cells):
                s_base, s_token, s_paper, s_ref = token[(sid, m, j)]
                assert s_token == pytest.approx(S_TOKEN[formula][c], rel=1e-12, abs=1e-15)
                assert s_paper == pytest.approx(S_TOKEN["paper"][c], rel=1e-12)
                assert s_ref == pytest.approx(S_TOKEN["reference-code"][c], rel=1e-12)
                assert s_base == S_BASE["paper"][c]  # softmax keeps the argmax (and the tie → k=1)
            assert sent[(sid, m)] == (3, pytest.approx(s_sent(tokens, alpha), rel=1e-12))
            total += THETA[m] / 400 * s_sent(tokens, alpha)
        expected_model[name] = total
        assert model[sid] == (2, pytest.approx(total, rel=1e-12))
    if formula == "paper" and alpha == 0.2:
        # The hand-worked figures above, to 7 digits.
        assert model[ids["s1"]][1] == pytest.approx(0.3125, abs=1e-12)
        assert model[ids["s2"]][1] == pytest.approx(0.5919064, abs=1e-7)
        assert model[ids["s3"]][1] == pytest.approx(2.3700971, abs=1e-7)
        assert {ids[k]: v for k, v in PAPER_02.items()} == {k: pytest.approx(v[1]) for k, v in model.items()}
    order = sorted(expected_model, key=lambda n: -expected_model[n])
    assert [(r[0], r[1]) for r in ranked] == [(ids[n], i + 1) for i, n in enumerate(order)]
    assert order == ["s3", "s2", "s1"]


def test_reference_numbers_spelled_out(engine) -> None:
    """One reference-code S_model written out in full: s3 at α = 0.2 (shares ¼, ¾)."""
    ids = seed(engine)
    # A: T4, T5, T1 → (0.0754776, 0.2594609, 0.1729739); B: T2 ×3 → 1.0925260, std 0.
    tok_a = (0.5 * (_b - 1) / (2 * _b + 1), 3 * (_b - _a) / (2 * _a + _b), 2 * (_b - _a) / (2 * _a + _b))
    assert tok_a == pytest.approx((0.0754776, 0.2594609, 0.1729739), abs=1e-7)
    mean = sum(tok_a) / 3  # 0.1693042
    std = math.sqrt(sum((t - mean) ** 2 for t in tok_a) / 3)  # 0.0751557
    expected = 0.25 * mean / (1 + 0.2 * std) + 0.75 * 3 * (_e - 1) / (2 + _e)
    assert expected == pytest.approx(0.25 * 0.1667970 + 0.75 * 1.0925260, abs=1e-6)
    con = fusion.connect(url_of(engine), Ranking(formula="reference-code", prompt_set="s"))
    try:
        got = con.execute(f"SELECT s_model FROM model_scores WHERE sample_id = {ids['s3']}").fetchone()[0]
    finally:
        con.close()
    assert got == pytest.approx(expected, rel=1e-12)


def test_ties_go_to_the_earlier_dataset_position(engine) -> None:
    # Three samples with identical cells: equal S_model. Positions 2, 0, 1 → order s2, s3, s1.
    same = {"A": (T1, T2, T3), "B": (T5, T5, T4)}
    ids = seed(engine, {"s1": same, "s2": same, "s3": same}, positions={"s1": 2, "s2": 0, "s3": 1})
    con = fusion.connect(url_of(engine), Ranking(prompt_set="s"))
    try:
        rows = con.execute("SELECT sample_id, position, rank, percentile FROM ranking ORDER BY rank").fetchall()
    finally:
        con.close()
    assert rows == [(ids["s2"], 0, 1, pytest.approx(1 / 3)), (ids["s3"], 1, 2, pytest.approx(2 / 3)),
                    (ids["s1"], 2, 3, 1.0)]


def test_missing_and_failed_cells_exclude_the_sample_and_are_counted(engine, cli) -> None:
    cells = {k: {m: list(v) for m, v in per.items()} for k, per in CELLS.items()}
    cells["s2"]["B"][1] = None  # never scored
    cells["s3"]["B"][0] = None
    cells["s3"]["B"][2] = None
    ids = seed(engine, {k: {m: tuple(v) for m, v in per.items()} for k, per in cells.items()},
               failed={("s3", "A", 1)})
    con = fusion.connect(url_of(engine), Ranking(prompt_set="s"))
    try:
        assert [r[0] for r in ranking(con)] == [ids["s1"]]
        cov = fusion.coverage(con, "d")
    finally:
        con.close()
    assert (cov.n_samples, cov.n_rankable, cov.samples_with_missing, cov.samples_with_failed) == (3, 1, 1, 1)
    by_model = {m.model: (m.ok, m.missing, m.failed) for m in cov.models}
    assert by_model == {"A": (8, 0, 1), "B": (6, 3, 0)}
    result = cli("rank", "--dataset", "d", "--prompt-set", "s")
    assert result.exit_code == 0, result.output
    assert "rankable: 1 of 3 samples (2 not rankable: 1 with missing cells, 1 with failed cells)" in result.output


def test_weights_override_and_models_weight(engine) -> None:
    ids = seed(engine, weights={"A": 3.0})  # models.weight θ_A = 3 beats n_params; θ_B = n_params 300
    s = {n: {m: s_sent(tuple(S_TOKEN["paper"][c] for c in cells), 0.2) for m, cells in per.items()}
         for n, per in CELLS.items()}
    for weights, theta in ((None, {"A": 3.0, "B": 300.0}), ({"A": 7, "B": 13}, {"A": 7.0, "B": 13.0}),
                           ({"B": 1}, {"A": 3.0, "B": 1.0})):
        con = fusion.connect(url_of(engine), Ranking(prompt_set="s", weights=weights))
        try:
            got = dict(con.execute("SELECT sample_id, s_model FROM model_scores").fetchall())
            assert {m.name: m.theta for m in fusion.params_of(con).models} == theta
        finally:
            con.close()
        total = theta["A"] + theta["B"]
        assert got == {ids[n]: pytest.approx(theta["A"] / total * s[n]["A"] + theta["B"] / total * s[n]["B"], rel=1e-12)
                       for n in CELLS}
    with pytest.raises(fusion.FusionError, match=r"--weights names 'C', which is not among the chosen models \(A, B\)"):
        fusion.connect(url_of(engine), Ranking(prompt_set="s", weights={"C": 1}))
    # One model alone: S_model = its S_sent.
    con = fusion.connect(url_of(engine), Ranking(prompt_set="s", models=["B"]))
    try:
        got = dict(con.execute("SELECT sample_id, s_model FROM model_scores").fetchall())
    finally:
        con.close()
    assert got == {ids[n]: pytest.approx(s[n]["B"], rel=1e-12) for n in CELLS}


def test_inactive_versions_leave_the_views(engine) -> None:
    ids = seed(engine)
    # A new version of model B with other ratings; the old one is deactivated but keeps its rows.
    with session_scope(engine) as s:
        old = s.get(LLM, ids["model:B"])
        old.active = False
        new = LLM(name="B", source="test", fingerprint="new" * 8, dtype="float32", n_params=300,
                  label_ids={}, max_tokens=512)
        s.add(new)
        s.flush()
        for name in CELLS:
            for j in range(3):
                s.add(Score(sample_id=ids[name], model_id=new.id, prompt_id=ids[f"prompt:{j}"],
                            p1=0.125, p2=0.25, p3=0.125, mass=0.5, status="ok"))  # T1 everywhere → 0.5
        new_id = new.id
    con = fusion.connect(url_of(engine), Ranking(prompt_set="s"))
    try:
        assert {m.model_id for m in fusion.params_of(con).models} == {ids["model:A"], new_id}
        assert con.execute("SELECT DISTINCT model_id FROM token_scores ORDER BY 1").fetchall() == [
            (ids["model:A"],), (new_id,)]
        got = dict(con.execute("SELECT sample_id, s_model FROM model_scores").fetchall())
        # The old version is still queryable by id.
        assert con.execute(f"SELECT count(*) FROM store.scores WHERE model_id = {ids['model:B']}").fetchone()[0] == 9
    finally:
        con.close()
    s_a = {n: s_sent(tuple(S_TOKEN["paper"][c] for c in CELLS[n]["A"]), 0.2) for n in CELLS}
    assert got == {ids[n]: pytest.approx(0.25 * s_a[n] + 0.75 * 0.5, rel=1e-12) for n in CELLS}


def test_sqlite_and_postgres_give_identical_rankings(sqlite_url: str, postgres_url: str) -> None:
    from selectit.store import db

    rng = random.Random(7)

    def cell() -> tuple[float, ...]:
        raw = [rng.random() ** 3 for _ in range(5)]
        return tuple(x / sum(raw) * rng.uniform(0.3, 1.0) for x in raw)

    cells = {f"s{i}": {m: tuple(cell() for _ in range(3)) for m in ("A", "B")} for i in range(40)}
    cells["s5"] = cells["s6"] = cells["s7"]  # equal scores: the tie rule decides
    rankings = []
    for url in (sqlite_url, postgres_url):
        db.upgrade(url)
        engine = db.open_store(url)
        seed(engine, cells, scale=5)
        for formula in ("paper", "reference-code"):
            con = fusion.connect(url, Ranking(prompt_set="s", formula=formula, alpha=0.3))
            try:
                rankings.append(ranking(con))
            finally:
                con.close()
        engine.dispose()
    assert len(rankings[0]) == 40
    assert rankings[0] == rankings[2] and rankings[1] == rankings[3]  # bit-identical scores too
    assert rankings[0] != rankings[1]


# ------------------------------------------------------------------------------------ the CLI
def _store_fingerprint(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return [conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar() for t in ("scores", "samples", "models")] + [
            conn.execute(sa.text("SELECT sum(p1) FROM scores")).scalar()]


@pytest.mark.parametrize("statement", [
    "INSERT INTO store.datasets (id, name) VALUES (99, 'x')",
    "UPDATE store.scores SET p1 = 0",
    "DELETE FROM store.scores",
    "DROP TABLE store.scores",
    "CREATE TABLE store.evil (a INTEGER)",
])
def test_sql_cannot_modify_the_database(engine, cli, statement: str) -> None:
    seed(engine)
    before = _store_fingerprint(engine)
    result = cli("sql", statement, "--prompt-set", "s")
    assert result.exit_code == 1
    assert result.output.startswith("Error: the curation database is read-only here: ")
    assert _store_fingerprint(engine) == before


def test_sql_refuses_reattaching_and_runs_queries(engine, cli, tmp_path) -> None:
    seed(engine)
    result = cli("sql", f"ATTACH '{tmp_path / 'x.db'}' AS w")
    assert result.exit_code == 1
    assert result.output == "Error: the curation database is read-only here: ATTACH statements are not allowed in `selectit sql`\n"
    result = cli("sql", "SELECT model, count(*) AS n FROM token_scores GROUP BY model ORDER BY model",
                 "--prompt-set", "s", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output == "model,n\nA,9\nB,9\n"
    result = cli("sql", "SELECT dataset, rank, instruction FROM selective_alpaca", "--prompt-set", "s",
                 "--top", "0.34", "--format", "json")
    assert json.loads(result.output) == [{"dataset": "d", "rank": 1, "instruction": "Instruction s3"}]


def test_rank_without_the_default_set_says_so(engine, cli) -> None:
    seed(engine)
    result = cli("rank", "--dataset", "d")
    assert result.exit_code == 1
    assert result.output == (
        "Error: the prompt set 'default' does not exist yet (sets with active prompts: s); score the dataset "
        "first (`selectit score`), or name an existing set with --prompt-set\n")
    result = cli("rank", "--dataset", "nope", "--prompt-set", "s")
    assert result.output == "Error: no dataset named 'nope' (datasets: d); ingest one with `selectit ingest FILE --dataset nope`\n"


def test_rank_prints_the_head_and_the_selection(engine, cli) -> None:
    seed(engine)
    result = cli("rank", "--dataset", "d", "--prompt-set", "s", "--top-n", "2")
    assert result.exit_code == 0, result.output
    assert result.output.index("Instruction s3") < result.output.index("Instruction s2")
    assert "Instruction s1" not in result.output
    assert "2.370097" in result.output
    assert "rankable: 3 of 3 samples\n" in result.output
    assert "selected: 2 of 3 rankable (top 2)" in result.output


def test_export_round_trip_reingests_to_the_same_hashes(engine, cli, tmp_path) -> None:
    ids = seed(engine)
    out = tmp_path / "sel.json"
    assert cli("select", "v1", "--dataset", "d", "--prompt-set", "s", "--top", "0.7").exit_code == 0
    result = cli("export", "--selection", "v1", "--out", out)
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text(encoding="utf-8"))
    # floor(0.7 × 3) = 2 samples, best first.
    assert records == [{"instruction": "Instruction s3", "input": "", "output": "Output s3 ✓"},
                       {"instruction": "Instruction s2", "input": "", "output": "Output s2 ✓"}]
    assert out.read_bytes().endswith(b"}\n]\n") and "✓".encode() in out.read_bytes()
    ingest_file(engine, out, "reimported")
    with engine.connect() as conn:
        hashes = conn.execute(sa.text(
            "SELECT s.id, s.content_hash FROM dataset_samples d JOIN samples s ON s.id = d.sample_id "
            "JOIN datasets x ON x.id = d.dataset_id WHERE x.name = 'reimported' ORDER BY d.position")).all()
        originals = dict(conn.execute(sa.text("SELECT id, content_hash FROM samples")).all())
    assert [h for _, h in hashes] == [originals[ids["s3"]], originals[ids["s2"]]]
    assert [sid for sid, _ in hashes] == [ids["s3"], ids["s2"]]  # the same samples, not copies


def test_frozen_selection_exports_identical_bytes_after_new_scores(engine, cli, tmp_path) -> None:
    ids = seed(engine)
    assert cli("select", "v1", "--dataset", "d", "--prompt-set", "s", "--top-n", "2").exit_code == 0
    paths = {fmt: tmp_path / f"first.{fmt}" for fmt in ("alpaca-json", "jsonl", "parquet")}
    for fmt, path in paths.items():
        assert cli("export", "--selection", "v1", "--out", path, "--format", fmt, "--with-scores").exit_code == 0
    first = {fmt: p.read_bytes() for fmt, p in paths.items()}
    lines = first["jsonl"].decode().splitlines()
    # S_model, and S_sent / S_token recomputed with the selection's models and prompts (worked above).
    assert json.loads(lines[0]) == {"instruction": "Instruction s3", "input": "", "output": "Output s3 ✓",
                                    "rank": 1, "s_model": pytest.approx(PAPER_02["s3"], rel=1e-12),
                                    "s_sent": {"A": pytest.approx(0.5 / (1 + 0.2 * math.sqrt(1 / 24)), rel=1e-12),
                                               "B": 3.0},
                                    "s_token": {"A": {"p0": 0.25, "p1": 0.75, "p2": 0.5},
                                                "B": {"p0": 3.0, "p1": 3.0, "p2": 3.0}}}
    # New scores arrive: model C rates s1 far above the rest; new data is ingested too.
    with session_scope(engine) as s:
        c = LLM(name="C", source="test", fingerprint="c" * 8, dtype="float32", n_params=10_000,
                label_ids={}, max_tokens=512)
        s.add(c)
        s.flush()
        for name in CELLS:
            for j in range(3):
                p = T2 if name == "s1" else T3
                s.add(Score(sample_id=ids[name], model_id=c.id, prompt_id=ids[f"prompt:{j}"],
                            p1=p[0], p2=p[1], p3=p[2], mass=0.5, status="ok"))
    (tmp_path / "more.json").write_text(json.dumps([{"instruction": "new", "input": "", "output": "one"}]))
    ingest_file(engine, tmp_path / "more.json", "d")
    live = tmp_path / "live.json"
    assert cli("export", "--dataset", "d", "--prompt-set", "s", "--top-n", "2", "--out", live).exit_code == 0
    assert json.loads(live.read_text())[0]["instruction"] == "Instruction s1"  # the live ranking moved
    for fmt, path in paths.items():
        again = tmp_path / f"again.{fmt}"
        assert cli("export", "--selection", "v1", "--out", again, "--format", fmt, "--with-scores").exit_code == 0
        assert again.read_bytes() == first[fmt], fmt
    result = cli("select", "v1", "--dataset", "d", "--prompt-set", "s")
    assert result.exit_code == 1
    assert result.output.startswith("Error: a selection named 'v1' already exists (2 samples, created ")
    assert result.output.endswith("choose another name, or export it with `selectit export --selection v1 --out FILE`\n")


def test_export_needs_a_selection_or_a_dataset(engine, cli, tmp_path) -> None:
    seed(engine)
    result = cli("export", "--out", tmp_path / "x.json")
    assert result.exit_code == 1
    assert "Error: give either --selection NAME (a frozen selection) or --dataset D (the current ranking)" in result.output
    result = cli("export", "--selection", "nope", "--out", tmp_path / "x.json")
    assert result.output == ("Error: no selection named 'nope' (selections: none); make one with "
                             "`selectit select nope --dataset D`\n")
    assert not (tmp_path / "x.json").exists() and not list(tmp_path.glob(".x.json*"))


# ------------------------------------------------------------------------ one read model
def _table_row(output: str, first: str) -> list[str]:
    """The cells of the rich table row whose first cell is `first`."""
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│┃").split("│")]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{output}")


def test_one_coverage_rule_for_rank_report_and_status(engine, cli, tmp_path) -> None:
    """done iff 'ok', failed iff 'failed', missing otherwise: the same numbers in all three views."""
    from selectit.report.build import build_report

    cells = {k: {m: list(v) for m, v in per.items()} for k, per in CELLS.items()}
    cells["s2"]["B"][1] = None  # never scored
    cells["s3"]["B"][0] = None
    cells["s3"]["B"][2] = None
    seed(engine, {k: {m: tuple(v) for m, v in per.items()} for k, per in cells.items()}, failed={("s3", "A", 1)})
    # model → (cells done, missing, failed)
    expected = {"A": (8, 0, 1), "B": (6, 3, 0)}

    con = fusion.connect(url_of(engine), Ranking(prompt_set="s"))
    try:
        cov = fusion.coverage(con, "d")
        overall = fusion.scoring_coverage(con)
    finally:
        con.close()
    assert {m.model: (m.ok, m.missing, m.failed) for m in cov.models} == expected
    assert {m.model: (m.samples_complete, m.samples_missing, m.samples_failed) for m in cov.models} == {
        "A": (2, 0, 1), "B": (1, 2, 0)}
    assert {(m.model, m.prompt_set): (m.ok, m.missing, m.failed) for m in overall} == {
        ("A", "s"): expected["A"], ("B", "s"): expected["B"]}

    rank = cli("rank", "--dataset", "d", "--prompt-set", "s")
    assert rank.exit_code == 0, rank.output
    for model, (ok, missing, failed) in expected.items():
        assert _table_row(rank.output, model)[2:] == [str(ok), str(missing), str(failed)]

    report = build_report(url_of(engine), "d", tmp_path / "report", Ranking(prompt_set="s"))
    rows = {r["model"]: r for r in report.tables["coverage"].records()}
    for model, (ok, missing, failed) in expected.items():
        assert (rows[model]["cells_ok"], rows[model]["cells_missing"], rows[model]["cells_failed"]) == (ok, missing, failed)
    assert (rows["A"]["complete"], rows["A"]["missing"], rows["A"]["failed"]) == (2, 0, 1)
    assert (report.n_samples, report.n_rankable) == (3, 1)

    status = cli("status")
    assert status.exit_code == 0, status.output
    for model, (ok, missing, failed) in expected.items():
        assert _table_row(status.output, model)[1:5] == ["s", str(ok), str(missing), str(failed)]


def test_a_top_share_keeps_at_least_one_sample(engine, cli, tmp_path) -> None:
    """3 rankable samples, --top 0.2: floor(0.6) = 0, but the share keeps at least one everywhere."""
    from selectit.report.build import build_report

    ids = seed(engine)
    rank = cli("rank", "--dataset", "d", "--prompt-set", "s", "--top", "0.2")
    assert rank.exit_code == 0, rank.output
    assert "selected: 1 of 3 rankable (top 0.2 share)" in rank.output
    select = cli("select", "v1", "--dataset", "d", "--prompt-set", "s", "--top", "0.2")
    assert select.exit_code == 0, select.output
    assert "1 of 3 rankable samples" in select.output
    for args in (["--selection", "v1"], ["--dataset", "d", "--prompt-set", "s", "--top", "0.2"]):
        out = tmp_path / "top.jsonl"
        assert cli("export", *args, "--out", out, "--format", "jsonl").exit_code == 0
        assert [json.loads(line)["instruction"] for line in out.read_text().splitlines()] == ["Instruction s3"]
    sql = cli("sql", "SELECT sample_id FROM selective_alpaca", "--prompt-set", "s", "--top", "0.2", "--format", "json")
    assert json.loads(sql.output) == [{"sample_id": ids["s3"]}]
    assert build_report(url_of(engine), "d", tmp_path / "report", Ranking(prompt_set="s"), top=0.2).n_selected == 1
    # A share that rounds down to more than one is not changed: 0.7 × 3 = 2.1 → 2.
    assert "selected: 2 of 3 rankable" in cli("rank", "--dataset", "d", "--prompt-set", "s", "--top", "0.7").output
