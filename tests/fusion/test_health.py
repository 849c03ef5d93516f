"""Rater health: the `rater_health` figures against numpy on the stored probabilities, the
thresholds turning into warnings, and real raters flagged (a tiny random-weight model by the
label-mass check, a scorer that rates everything the same by the collapse check).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import DEMO_DATA
from test_views import THETA, seed, url_of

from selectit.ranking import Ranking
from selectit.api import Store
from selectit.formulas import token_score
from selectit.fusion import health
from selectit.fusion import views as fusion
from selectit.store.db import session_scope
from selectit.store.schema import LLM, Score

K, N_PROMPTS, N_SAMPLES = 5, 3, 14


def _random_cells(rng: random.Random) -> dict[str, dict[str, tuple]]:
    """Per sample (names of random length, so the responses differ in length) × models A, B."""
    cells = {}
    for i in range(N_SAMPLES):
        name = f"s{i}-" + "z" * rng.randint(0, 40)
        cells[name] = {m: tuple(tuple(rng.choice([0.0, 0.01, 0.05, 0.1, 0.2, 0.3]) for _ in range(K))
                                for _ in range(N_PROMPTS)) for m in ("A", "B")}
    cells[next(iter(cells))]["A"] = ((0.0,) * K, *cells[next(iter(cells))]["A"][1:])  # a zero-mass cell
    return cells


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):  # ties share their mean rank
        ranks[x == v] = ranks[x == v].mean()
    return ranks


def _spearman(x, y) -> float | None:
    x, y = np.round(np.asarray(x, float), 12), np.round(np.asarray(y, float), 12)  # ties as the view sees them
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    return float(np.corrcoef(_average_ranks(x), _average_ranks(y))[0, 1])


def _expected(cells: dict, ids: dict, truncated: set, alpha: float = 0.2) -> dict:
    """The figures by numpy from the same probabilities (formulas.token_score: the paper formula)."""
    out: dict = {}
    length = {ids[name]: len(f"Output {name} ✓") for name in cells}
    tokens: dict = {}  # (model, prompt) → {sample: (s_base, s_token, max P')}
    mass: dict = {}
    for name, per_model in cells.items():
        for m, probs in per_model.items():
            for j, p in enumerate(probs):
                mass.setdefault((m, j), []).append(sum(p))
                if sum(p) > 0:
                    base, s_tok = token_score(p)
                    tokens.setdefault((m, j), {})[ids[name]] = (base, s_tok, max(p) / sum(p))
    s_sent: dict = {}
    for m in ("A", "B"):
        for sid in length:
            vals = [tokens[(m, j)].get(sid) for j in range(N_PROMPTS)]
            if all(v is not None for v in vals):
                t = np.array([v[1] for v in vals])
                s_sent.setdefault(m, {})[sid] = t.mean() / (1 + alpha * t.std())
    for m in ("A", "B"):
        all_mass = [x for j in range(N_PROMPTS) for x in mass[(m, j)]]
        bases = [v[0] for j in range(N_PROMPTS) for v in tokens[(m, j)].values()]
        counts = {b: bases.count(b) for b in set(bases)}
        mode = min(counts, key=lambda b: (-counts[b], b))
        pair_rhos = []
        for a in range(N_PROMPTS):
            for b in range(a + 1, N_PROMPTS):
                common = sorted(s_sent[m])  # the samples the model scored with every prompt
                pair_rhos.append(_spearman([tokens[(m, a)][s][1] for s in common],
                                           [tokens[(m, b)][s][1] for s in common]))
        sids = sorted(s_sent[m])
        out[m] = {
            "cells": len(all_mass),
            "mass_median": float(np.median(all_mass)), "mass_p10": float(np.percentile(all_mass, 10)),
            "mean_max_p": float(np.mean([v[2] for j in range(N_PROMPTS) for v in tokens[(m, j)].values()])),
            "collapse_base": mode, "collapse_share": counts[mode] / len(bases),
            "truncated_share": sum(1 for (mm, _, _) in truncated if mm == m) / len(all_mass),
            "rho_prompts": float(np.median(pair_rhos)),
            "rho_length": _spearman([s_sent[m][s] for s in sids], [length[s] for s in sids]),
        }
        for j in range(N_PROMPTS):
            out[(m, j)] = {"cells": len(mass[(m, j)]), "mass_median": float(np.median(mass[(m, j)])),
                           "mass_p10": float(np.percentile(mass[(m, j)], 10))}
    both = sorted(set(s_sent["A"]) & set(s_sent["B"]))
    rho_ab = _spearman([s_sent["A"][s] for s in both], [s_sent["B"][s] for s in both])
    out["A"]["rho_models"] = out["B"]["rho_models"] = rho_ab
    total = sum(THETA.values())
    s_model = {s: THETA["A"] / total * s_sent["A"][s] + THETA["B"] / total * s_sent["B"][s] for s in both}
    out["fusion"] = {"rho_models": rho_ab, "samples": len(both),
                     "rho_length": _spearman([s_model[s] for s in both], [length[s] for s in both])}
    return out


def test_figures_match_numpy_on_the_stored_probabilities(engine: sa.Engine) -> None:
    rng = random.Random(7)
    cells = _random_cells(rng)
    ids = seed(engine, cells, scale=K, n_prompts=N_PROMPTS)
    names = list(cells)
    truncated = {("A", names[2], 0), ("A", names[3], 1), ("B", names[4], 2)}
    with session_scope(engine) as s:
        for m, name, j in truncated:
            s.execute(sa.update(Score).where(Score.sample_id == ids[name], Score.model_id == ids[f"model:{m}"],
                                             Score.prompt_id == ids[f"prompt:{j}"]).values(truncated=True))
    expected = _expected(cells, ids, truncated)
    table = Store(url_of(engine)).diagnose("d", ranking=Ranking(prompt_set="s"))
    rows = table.to_pylist()
    assert [r["level"] for r in rows] == ["model", "prompt", "prompt", "prompt"] * 2 + ["fusion"]
    for r in rows:
        if r["level"] == "fusion":
            want = expected["fusion"]
            assert r["samples"] == want["samples"]
            assert r["rho_models"] == pytest.approx(want["rho_models"])
            assert r["rho_length"] == pytest.approx(want["rho_length"])
        elif r["level"] == "model":
            want = expected[r["model"]]
            for key, value in want.items():
                assert r[key] == pytest.approx(value), (r["model"], key)
        else:
            want = expected[(r["model"], r["position"])]
            for key, value in want.items():
                assert r[key] == pytest.approx(value), (r["model"], r["position"], key)


def _row(**figures) -> dict:
    base = {"level": "model", "model": "m", "cells": 100, "samples": 50, "scale": 5, "mass_median": 0.8,
            "mass_p10": 0.5, "mean_max_p": 0.6, "collapse_base": 4, "collapse_share": 0.5, "truncated_share": 0.0,
            "rho_prompts": 0.6, "rho_models": 0.5, "rho_length": 0.1, "rho_pairs": 10}
    return base | figures


@pytest.mark.parametrize("figures, kind, text", [
    ({"mass_median": 0.03}, "no-labels", "rater m: median label mass 0.03 — it rarely answers with a digit"),
    ({"mass_p10": 0.001}, "no-labels", "p10 label mass 0.001"),
    ({"collapse_share": 0.97}, "collapsed", "rater m: 97% of cells get S_base 4 — the ratings barely separate"),
    ({"mean_max_p": 0.22}, "undecided", "mean max P' 0.22 (uniform is 0.20)"),
    ({"rho_prompts": 0.05}, "disagrees", "prompts of m disagree (median ρ 0.05 over 10 pairs)"),
    ({"rho_length": -0.85}, "length", "S_sent follows the response length (ρ -0.85)"),
    ({"truncated_share": 0.2}, "truncated", "20% of cells were truncated"),
])
def test_each_threshold_gives_one_warning_naming_the_rater(figures, kind, text) -> None:
    assert health.judge([_row()]) == []
    found = health.judge([_row(**figures)])
    assert [w.kind for w in found] == [kind] and text in found[0].text
    assert health.word(found, "m") == kind and health.word(found, "other") == "ok"


def test_agreement_is_not_judged_on_few_samples() -> None:
    assert health.judge([_row(samples=5, rho_prompts=-0.9, rho_length=0.99)]) == []
    fused = {"level": "fusion", "model": None, "samples": 40, "rho_models": 0.01, "rho_length": 0.9}
    assert [w.kind for w in health.judge([fused])] == ["disagrees", "length"]


def _score_demo(cli, n: int = 12) -> None:
    assert cli("ingest", DEMO_DATA, "--dataset", "d", "--limit", str(n)).exit_code == 0


def test_a_tiny_random_weight_rater_is_flagged_by_label_mass(cli, db_url, tiny_model_dir) -> None:
    _score_demo(cli)
    assert cli("model", "add", "tiny", "--source", str(tiny_model_dir), "--dtype", "float32").exit_code == 0
    assert cli("score", "--dataset", "d", "--quiet").exit_code == 0
    store = Store(db_url)
    row = next(r for r in store.diagnose("d").to_pylist() if r["level"] == "model")
    with session_scope(store.engine) as s:  # the figure from the stored masses themselves
        masses = s.scalars(sa.select(Score.mass).where(Score.status == "ok")).all()
    assert row["cells"] == 60 and row["mass_median"] == pytest.approx(float(np.median(masses)))
    warnings = store.health_warnings("d")
    assert any(w.startswith("rater tiny: median label mass") and "rarely answers with a digit" in w for w in warnings)
    result = cli("rank", "--dataset", "d")
    assert result.exit_code == 0
    assert "warning: rater tiny: median label mass" in result.stderr
    assert "median label mass" not in result.stdout
    shown = cli("diagnose", "--dataset", "d")
    assert shown.exit_code == 0 and "warning: rater tiny: median label mass" in shown.stdout
    assert "no-labels" in cli("status").stdout


def test_a_rater_that_rates_everything_the_same_is_flagged_by_collapse(cli, db_url, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SELECTIT_SCORER", "scorer_hooks:fixed")
    _score_demo(cli)
    with session_scope(Store(db_url).engine) as s:  # registered without loading anything
        s.add(LLM(name="same", source="test", fingerprint="f" * 64, dtype="float32", n_params=1,
                  label_ids={"shared-context": [1, 2, 3, 4, 5, 6, 7, 8, 9]}, max_tokens=512))
    assert cli("score", "--dataset", "d", "--quiet").exit_code == 0
    import json

    shown = cli("diagnose", "--dataset", "d", "--format", "json")
    assert shown.exit_code == 0
    report = json.loads(shown.stdout)
    model_row = next(r for r in report["rows"] if r["level"] == "model")
    assert model_row["collapse_share"] == 1.0 and model_row["collapse_base"] == 4
    assert model_row["mass_median"] == pytest.approx(1.0) and model_row["mean_max_p"] == pytest.approx(0.6)
    assert report["warnings"] == [
        "rater same: 100% of cells get S_base 4 — the ratings barely separate the data: try other prompts or a "
        "larger rater"]
    assert report["thresholds"]["collapse_share"] == health.THRESHOLDS.collapse_share
    for args in (["select", "v1", "--dataset", "d"], ["export", "--selection", "v1", "--out", tmp_path / "v1.json"],
                 ["export", "--dataset", "d", "--out", tmp_path / "top.json"],
                 ["report", "--dataset", "d", "--out", tmp_path / "report"],
                 ["select", "ctl", "--dataset", "d", "--random", "0.5", "--seed", "1"],
                 ["export", "--selection", "ctl", "--out", tmp_path / "ctl.json", "--format", "original"]):
        result = cli(*args)
        assert result.exit_code == 0, result.output
        assert result.stderr.count("warning: rater same: 100% of cells get S_base 4") == 1, args
    assert len(json.loads((tmp_path / "ctl.json").read_text(encoding="utf-8"))) == 6  # the records as ingested
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert page.index("Rater health") < page.index("Coverage") and "100% of cells get S_base 4" in page
    assert "collapsed" in cli("status").stdout


def test_diagnose_says_what_is_wrong(cli) -> None:
    result = cli("diagnose", "--dataset", "nope")
    assert result.exit_code == 1 and "Error:" in result.output


def test_status_health_over_every_sample(engine: sa.Engine) -> None:
    ids = seed(engine, _random_cells(random.Random(3)), scale=K, n_prompts=N_PROMPTS)
    words = health.store_words(url_of(engine), ["s"])
    assert set(words) == {("A", "s"), ("B", "s")} and set(words.values()) <= {"ok", *health.WORDS}
    con = fusion.connect(url_of(engine), Ranking(prompt_set="s"))
    try:  # '*' covers each stored sample once: the same cells as the dataset's own rows
        cells = con.execute(f"SELECT model, cells FROM ({fusion.health_sql(fusion.ALL_SAMPLES_SCOPE, fusion.params_of(con))}) "
                            "WHERE level = 'model' ORDER BY model").fetchall()
    finally:
        con.close()
    assert cells == [("A", N_SAMPLES * N_PROMPTS), ("B", N_SAMPLES * N_PROMPTS)] and ids


def test_one_prompt_that_rates_everything_the_same_is_flagged(cli, db_url, monkeypatch) -> None:
    """36 samples, one prompt of five rating every one "1": the model's own figures pass, the prompt's warn."""
    monkeypatch.setenv("SELECTIT_SCORER", "scorer_hooks:one_prompt_says_one")
    _score_demo(cli, 36)
    with session_scope(Store(db_url).engine) as s:
        s.add(LLM(name="len", source="test", fingerprint="d" * 64, dtype="float32", n_params=1,
                  label_ids={"shared-context": [1, 2, 3, 4, 5, 6, 7, 8, 9]}, max_tokens=4096))
    assert cli("score", "--dataset", "d", "--quiet").exit_code == 0
    line = "prompt 0 of rater len: 100% of cells get S_base 1 — the ratings barely separate the data"
    ranked = cli("rank", "--dataset", "d")
    assert ranked.exit_code == 0 and line in ranked.stderr and "warning: rater len: 100%" not in ranked.stderr
    shown = cli("diagnose", "--dataset", "d")
    assert line in shown.stdout
    assert "collapsed" in cli("status", "--dataset", "d").stdout and "collapsed" in cli("status").stdout


# ------------------------------------------------------------------------------------ turn positions
def test_diagnose_gives_the_mean_s_sent_and_truncated_cells_by_turn_position(cli, db_url, tmp_path) -> None:
    """Real ShareGPT conversations, every turn rated alike (`score_everything`) and the last turns
    of conversations of 3+ rated turns marked truncated: the figures per turn position are the
    formula's over the samples that have that position."""
    import json

    from test_export import ok, score_everything
    from test_turns import sharegpt_records

    def s_sent_of(s_tokens: list[float], alpha: float = 0.2) -> float:  # the sentence level (ddof 0)
        return float(np.mean(s_tokens) / (1 + alpha * np.std(s_tokens)))

    path = tmp_path / "sg.json"
    path.write_text(json.dumps(sharegpt_records(60)), encoding="utf-8")
    ok(cli("ingest", path, "--dataset", "sg", "--format", "sharegpt", "--skip-invalid"))
    score_everything(db_url)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE scores SET truncated = :t WHERE turn = 0 AND sample_id IN "
                             "(SELECT id FROM samples WHERE n_turns >= 3)"), {"t": True})
        samples = conn.execute(sa.text("SELECT id, n_turns FROM samples WHERE n_turns > 1")).all()
        cells = {}
        for sid, p1, p2, p3 in conn.execute(sa.text("SELECT sample_id, p1, p2, p3 FROM scores WHERE turn = 0")):
            cells.setdefault(sid, []).append(token_score((p1, p2, p3))[1])
    engine.dispose()
    expected = {}
    for position in range(1, max(n for _, n in samples) + 1):
        have = [sid for sid, n in samples if n >= position]
        truncated = sum(3 for sid, n in samples if n >= 3 and n == position)
        expected[position] = (len(have), float(np.mean([s_sent_of(cells[sid], 0.2) for sid in have])),
                              3 * len(have), truncated)
    out = json.loads(ok(cli("diagnose", "--dataset", "sg", "--prompt-set", "s", "--format", "json")))
    rows = {r["position"]: r for r in out["rows"] if r["level"] == "turn"}
    assert set(rows) == set(expected) and len(rows) >= 4
    for position, (n, mean, n_cells, truncated) in expected.items():
        r = rows[position]
        assert (r["samples"], r["cells"], r["truncated"]) == (n, n_cells, truncated)
        assert r["mean_s_sent"] == pytest.approx(mean, rel=1e-9)
    table = ok(cli("diagnose", "--dataset", "sg", "--prompt-set", "s"))
    assert "by turn position" in table
