"""`selectit audit`: known-bad twins of a dataset's records, scored like any sample, kept out of
the dataset's own ranking, and the figures (AUROC, top-share intake, ρ with length) that say
whether the raters tell them apart (docs/audit.md)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa
from conftest import DEMO_DATA

from selectit.api import Store
from selectit.io.audit import KINDS, make_twins, replaced_turn, truncated
from selectit.store.db import session_scope
from selectit.store.schema import LLM, Sample, Score


def _length_rater(cli, db_url: str, monkeypatch, n: int = 60) -> None:
    """`n` demo records in dataset `d`, and a rater that rates by response length (scorer_hooks:by_length)."""
    monkeypatch.setenv("SELECTIT_SCORER", "scorer_hooks:by_length")
    assert cli("ingest", DEMO_DATA, "--dataset", "d", "--limit", str(n)).exit_code == 0
    with Store(db_url) as store, session_scope(store.engine) as s:  # registered without loading anything
        s.add(LLM(name="len", source="test", fingerprint="e" * 64, dtype="float32", n_params=1,
                  label_ids={"shared-context": [1, 2, 3, 4, 5, 6, 7, 8, 9]}, max_tokens=4096))


def _auroc(clean: list[float], bad: list[float]) -> float:
    """P(clean > bad) + ½ P(tie), by counting every pair."""
    c, b = np.array(clean)[:, None], np.array(bad)[None, :]
    return float(((c > b) + 0.5 * (c == b)).mean())


def _s_sent(probs: np.ndarray, alpha: float = 0.2) -> float:
    """S_sent of one sample from its K' rows of p_1..p_K (the paper's formula, docs/method.md)."""
    p = probs / probs.sum(axis=1, keepdims=True)
    base = p.argmax(axis=1) + 1
    s_token = base * np.abs(p - p.max(axis=1, keepdims=True)).sum(axis=1) / (p.shape[1] - 1)
    return float(s_token.mean() / (1 + alpha * s_token.std()))


def test_a_length_rater_catches_truncation_not_mismatch_and_the_auroc_is_numpys(cli, db_url, monkeypatch) -> None:
    _length_rater(cli, db_url, monkeypatch)
    shown = cli("audit", "--dataset", "d", "--size", "40", "--format", "json")
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    assert report["audit"] == "d.audit" and report["drawn"] == 40
    assert set(report["twins"]) == {"mismatched", "truncated", "refusal", "echo"}  # no multi-turn records
    rows = {(r["level"], r["kind"]): r for r in report["rows"] if r["level"] != "prompt"}
    assert rows[("fusion", "truncated")]["auroc"] > 0.7 and abs(rows[("fusion", "mismatched")]["auroc"] - 0.5) < 0.1
    # a rater that only measures length is the length-only ranking
    assert all(r["auroc"] == pytest.approx(r["auroc_length"]) for r in report["rows"])
    # the fused AUROC from the stored probabilities, with numpy
    raw = json.loads(cli("sql", "SELECT x.sample_id, x.kind, s.p1, s.p2, s.p3, s.p4, s.p5 FROM store.audit_samples x "
                                "JOIN store.scores s ON s.sample_id = x.sample_id ORDER BY x.sample_id, s.prompt_id",
                         "--format", "json").stdout)
    per: dict[int, tuple[str, list]] = {}
    for r in raw:
        per.setdefault(r["sample_id"], (r["kind"], []))[1].append([r[f"p{k}"] for k in range(1, 6)])
    scores = {sid: (kind, _s_sent(np.array(p))) for sid, (kind, p) in per.items()}
    clean = [v for kind, v in scores.values() if kind == "clean"]
    for kind in ("all", "truncated", "mismatched"):
        bad = [v for k, v in scores.values() if k != "clean" and kind in ("all", k)]
        assert rows[("fusion", kind)]["auroc"] == pytest.approx(_auroc(clean, bad), abs=0.005)
    table = cli("audit", "--dataset", "d", "--size", "40")  # the same twins: nothing new to score
    assert table.exit_code == 0
    assert "scored 0 cells" in table.stdout and "truncated" in table.stdout and "mismatched" in table.stdout
    fused = rows[("fusion", "all")]["auroc"]
    assert f"verdict: raters separate broken responses from good ones (AUROC {fused:.2f})" in table.stdout
    assert report["verdict"] in table.stdout and "ranking by response length alone does as well" in table.stdout


def test_twins_stay_out_of_the_dataset_and_deleting_them_keeps_its_scores(cli, db_url, monkeypatch, tmp_path,
                                                                           request) -> None:
    _length_rater(cli, db_url, monkeypatch, n=30)
    assert cli("score", "--dataset", "d", "--quiet").exit_code == 0
    store = Store(db_url)
    request.addfinalizer(store.close)
    with session_scope(store.engine) as s:
        before = sorted(tuple(r) for r in s.execute(sa.select(Score.sample_id, Score.prompt_id, Score.p1)))
    assert cli("audit", "--dataset", "d", "--size", "20", "-q").exit_code == 0
    twins = set(store.sql("SELECT sample_id FROM store.audit_samples WHERE kind <> 'clean'")["sample_id"].to_pylist())
    assert len(twins) >= 70
    assert len(store.rank("d")) == 30 and not twins & set(store.rank("d")["sample_id"].to_pylist())
    assert cli("select", "v1", "--dataset", "d", "--top", "1").exit_code == 0
    assert len(store.selection("v1")) == 30 and not twins & set(store.selection("v1")["sample_id"].to_pylist())
    assert cli("export", "--dataset", "d", "--top", "1", "--out", tmp_path / "all.json").exit_code == 0
    assert len(json.loads((tmp_path / "all.json").read_text(encoding="utf-8"))) == 30
    counts = dict(zip(*store.datasets().select(["name", "samples"]).to_pydict().values()))
    assert counts["d"] == 30
    assert store.status("d").samples_per_dataset == [("d", 30)]
    assert [(r.done, r.missing) for r in store.status("d").scoring] == [(30 * 5, 0)]
    report = store.report("d", tmp_path / "report")
    assert (report.n_samples, report.n_rankable) == (30, 30)
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")  # the audit: its own section
    assert (tmp_path / "report" / "audit.png").is_file() and "Audit: known-bad twins" in page and "Verdict: raters" in page
    deleted = cli("audit", "--dataset", "d", "--delete")
    assert deleted.exit_code == 0 and f"{len(twins)} twin samples" in deleted.stdout, deleted.output
    with session_scope(store.engine) as s:
        after = sorted(tuple(r) for r in s.execute(sa.select(Score.sample_id, Score.prompt_id, Score.p1)))
        assert not s.scalars(sa.select(Sample.id).where(Sample.id.in_(twins))).all()
    assert after == before and "d.audit" not in store.datasets()["name"].to_pylist()


def test_the_same_seed_makes_the_same_twins_on_both_stores(sqlite_url, postgres_url) -> None:
    drawn = []
    for url in (sqlite_url, postgres_url):
        with Store(url) as store:
            store.ingest(DEMO_DATA, "d", limit=50)
            made = store.audit("d", size=20, seed=3, score=False).made
            assert made.size == 20 and made.twins["mismatched"] == 20
            drawn.append(sorted(store.sql("SELECT s.content_hash, x.kind FROM store.audit_samples x "
                                          "JOIN store.samples s ON s.id = x.sample_id").to_pylist(),
                                key=lambda r: (r["content_hash"], r["kind"])))
    assert drawn[0] == drawn[1] and len(drawn[0]) > 80


def test_twins_of_each_kind() -> None:
    assert truncated("one two three four five six seven eight nine ten") == "one two three"
    assert truncated("single") is None
    assert replaced_turn("User: Hi\nAssistant: Hello!\nUser: Colour?", "42.") == "User: Hi\nAssistant: 42.\nUser: Colour?"
    assert replaced_turn("Name a colour.", "42.") is None
    records = [("a" * 64, "User: Hi\nAssistant: Hello there!\nUser: Name a colour.", "", "Blue is a colour."),
               ("b" * 64, "Add 2 and 3.", "", "2 plus 3 makes 5, the sum.")]
    twins = {(t.kind, t.source[0]): t for t in make_twins(records, seed=0)}
    assert set(twins) == {(k, s) for k in KINDS for s in "ab"} - {("turn", "b")}  # only the first is multi-turn
    assert twins[("mismatched", "a")].output == "2 plus 3 makes 5, the sum."
    assert twins[("truncated", "b")].output == "2 plus"
    assert twins[("echo", "b")].output == "Add 2 and 3."
    assert twins[("turn", "a")].instruction == "User: Hi\nAssistant: 2 plus 3 makes 5, the sum.\nUser: Name a colour."
    assert twins[("turn", "a")].output == "Blue is a colour."


def test_audit_says_what_is_wrong(cli) -> None:
    missing = cli("audit", "--dataset", "nope")
    assert missing.exit_code == 1 and "Error:" in missing.output
    assert cli("ingest", DEMO_DATA, "--dataset", "d", "--limit", "1").exit_code == 0
    small = cli("audit", "--dataset", "d", "--no-score")
    assert small.exit_code == 1 and "at least 2" in small.output
    none = cli("audit", "--dataset", "d", "--delete")
    assert none.exit_code == 1 and "has no audit" in none.output


def test_a_random_weight_rater_is_close_to_random(sqlite_url, tmp_path) -> None:
    """A 2-layer model with random weights (seed 1) has no idea what a good response is."""
    from click.testing import CliRunner
    from tiny_model import build_tiny_model

    from selectit.cli import main

    def cli(*args: object):  # noqa: ANN202
        return CliRunner().invoke(main, ["--db", sqlite_url, *map(str, args)], catch_exceptions=False)

    model = build_tiny_model(tmp_path / "tiny", seed=1)
    assert cli("ingest", DEMO_DATA, "--dataset", "d", "--limit", "200").exit_code == 0
    assert cli("model", "add", "tiny", "--source", model, "--dtype", "float32").exit_code == 0
    shown = cli("audit", "--dataset", "d", "--size", "60", "--format", "json")
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    fused = next(r for r in report["rows"] if r["level"] == "fusion" and r["kind"] == "all")
    assert abs(fused["auroc"] - 0.5) < 0.1 and fused["n_clean"] == 60
    assert report["verdict"].startswith(f"raters rank broken responses like good ones (AUROC {fused['auroc']:.2f}): "
                                        "this selection is close to random")
    assert report["passed"] is False
    # a failed audit is said wherever the ranking is used, and the dataset card records it
    failed = f"the audit failed: raters rank broken responses like good ones (AUROC {fused['auroc']:.2f})"
    ranked = cli("rank", "--dataset", "d")
    assert ranked.exit_code == 0 and failed in ranked.stderr and failed not in ranked.stdout
    assert failed in cli("diagnose", "--dataset", "d").stdout
    exported = cli("export", "--dataset", "d", "--out", tmp_path / "top.json")
    assert exported.exit_code == 0 and failed in exported.stderr
    card = (tmp_path / "top.json.README.md").read_text(encoding="utf-8")
    assert "- audit (`selectit audit`, 60 records drawn with seed 0 and" in card and "close to random" in card


def _pairs_file(path, lengths: list[tuple[int, int]]) -> None:
    """A JSON Lines file of preferences whose chosen and rejected responses have the given word counts."""
    lines = [json.dumps({"prompt": f"Write {i}.", "chosen": " ".join(["ok"] * c), "rejected": " ".join(["ok"] * r)})
             for i, (c, r) in enumerate(lengths)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_pairwise_preferences_give_the_accuracy_counted_by_hand(cli, db_url, monkeypatch, tmp_path) -> None:
    _length_rater(cli, db_url, monkeypatch, n=5)
    # 20 pairs: the chosen response longer in 12, shorter in 6, as long (a tie, ½) in 2
    lengths = [(30, 10)] * 12 + [(5, 40)] * 6 + [(20, 20)] * 2
    _pairs_file(tmp_path / "prefs.jsonl", lengths)
    shown = cli("audit", "--dataset", "d", "--labels", tmp_path / "prefs.jsonl", "--format", "json")
    assert shown.exit_code == 0, shown.output
    report = json.loads(shown.stdout)
    fused = next(r for r in report["rows"] if r["level"] == "fusion")
    assert fused["n"] == 20 and fused["agreement"] == (12 + 0.5 * 2) / 20  # a rater by length: the hand count
    assert fused["agreement_length"] == (12 + 0.5 * 2) / 20
    assert report["verdict"].startswith("raters prefer the human-chosen response in 65% of 20 pairs")
    again = cli("audit", "--dataset", "d", "--labels", tmp_path / "prefs.jsonl")  # only missing cells: none
    assert again.exit_code == 0 and "scored 0 cells" in again.stdout and "accuracy" in again.stdout
    with Store(db_url) as store:  # only the labelled samples were scored, and they are not the dataset's
        assert store.rank("d").num_rows == 0 and store.datasets()["samples"].to_pylist() == [5, 38]


def test_graded_records_give_spearman_rho(cli, db_url, monkeypatch, tmp_path) -> None:
    _length_rater(cli, db_url, monkeypatch, n=5)
    words = [3, 9, 27, 1, 14, 6, 40, 2]
    labels = [2, 3, 5, 1, 4, 4, 3, 1]
    (tmp_path / "graded.json").write_text(json.dumps(
        [{"instruction": f"Say {i}.", "output": " ".join(["ok"] * w), "label": g}
         for i, (w, g) in enumerate(zip(words, labels))]), encoding="utf-8")
    shown = cli("audit", "--dataset", "d", "--labels", tmp_path / "graded.json", "--format", "json")
    assert shown.exit_code == 0, shown.output
    fused = next(r for r in json.loads(shown.stdout)["rows"] if r["level"] == "fusion")

    def ranks(v):  # mean ranks of ties, as scipy.stats.rankdata
        return np.array([np.mean([j for j, b in enumerate(sorted(v)) if b == a]) for a in v])

    expected = float(np.corrcoef(ranks(words), ranks(labels))[0, 1])
    assert fused["n"] == 8 and fused["agreement"] == pytest.approx(expected)


def test_a_labels_file_says_what_is_wrong(cli, tmp_path) -> None:
    assert cli("ingest", DEMO_DATA, "--dataset", "d", "--limit", "2").exit_code == 0
    (tmp_path / "bad.jsonl").write_text('{"prompt": "Hi", "chosen": "Hello"}\n', encoding="utf-8")
    bad = cli("audit", "--dataset", "d", "--labels", tmp_path / "bad.jsonl", "--no-score")
    assert bad.exit_code == 1 and "record 1: field 'rejected' must be a non-empty string" in bad.output


def test_an_audit_of_two_chosen_models_scores_each_and_fuses_them(cli, db_url, monkeypatch) -> None:
    _length_rater(cli, db_url, monkeypatch, n=20)
    with Store(db_url) as store, session_scope(store.engine) as s:
        for name in ("len2", "unused"):
            s.add(LLM(name=name, source="test", fingerprint=name[0] * 64, dtype="float32", n_params=3,
                      label_ids={"shared-context": [1, 2, 3, 4, 5, 6, 7, 8, 9]}, max_tokens=4096))
    shown = cli("audit", "--dataset", "d", "--models", "len,len2", "--weights", "len=1,len2=3")
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.count("scored ") == 2 and "S_model (fused)" in shown.stdout and "len2 prompt 4" in shown.stdout
    with Store(db_url) as store:  # the model not chosen was not scored
        per_model = store.sql("SELECT m.name AS model, count(*) AS n FROM store.scores s JOIN store.models m ON m.id = s.model_id "
                              "GROUP BY ALL ORDER BY model").to_pylist()
    assert [r["model"] for r in per_model] == ["len", "len2"]
