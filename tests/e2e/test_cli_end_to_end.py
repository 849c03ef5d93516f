"""Every command with names that need quoting, and `selectit demo`, on the tiny model of tests/tiny_model.py."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from selectit.cli import main

DATASET = 'it\'s "data"'
MODEL = 'o\'neil "tiny"'
PROMPT_SET = 'set \'a\' "b"'
SELECTION = 'pick \'n\' "mix"'


def ok(result) -> str:  # noqa: ANN001
    assert result.exit_code == 0, result.output
    return result.output


def test_names_with_quotes_work_through_every_command(cli, tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "d.json"
    data.write_text(json.dumps([{"instruction": f"Add {i} and {i}.", "input": "", "output": str(2 * i)}
                                for i in range(1, 6)]), encoding="utf-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Rate the response from 1 to 5.\nHow correct is the response, 1 to 5?\n", encoding="utf-8")

    assert DATASET in ok(cli("ingest", data, "--dataset", DATASET))
    assert DATASET in ok(cli("datasets"))
    ok(cli("model", "add", MODEL, "--source", tiny_model_dir, "--dtype", "float32"))
    assert MODEL in ok(cli("models"))
    ok(cli("prompts", "import", prompts, "--set", PROMPT_SET, "--layout", "reference"))
    assert PROMPT_SET in ok(cli("prompts"))
    scope = ["--dataset", DATASET, "--prompt-set", PROMPT_SET]
    assert "scored 10 cells, failed 0" in ok(cli("score", *scope, "--model", MODEL, "--quiet"))
    ok(cli("score", "--dataset", DATASET, "--quiet"))  # the default set too, so `status` shows both
    status = ok(cli("status"))
    assert "tiny" in status and "neil" in status

    fusion = ["--prompt-set", PROMPT_SET, "--models", MODEL]
    assert "rankable: 5 of 5" in ok(cli("rank", "--dataset", DATASET, *fusion))
    assert "2 of 5 rankable" in ok(cli("select", SELECTION, "--dataset", DATASET, *fusion, "--top-n", "2"))
    frozen, live = tmp_path / "frozen.json", tmp_path / "live.json"
    ok(cli("export", "--selection", SELECTION, "--out", frozen))
    ok(cli("export", "--dataset", DATASET, *fusion, "--top-n", "2", "--out", live))
    assert json.loads(frozen.read_text()) == json.loads(live.read_text()) and len(json.loads(live.read_text())) == 2
    ok(cli("report", "--dataset", DATASET, "--out", tmp_path / "report", "--prompt-set", PROMPT_SET,
           "--models", MODEL))
    assert (tmp_path / "report" / "index.html").is_file()
    sql = ["sql", "--format", "json", *fusion]
    ranking = ok(cli(*sql, "SELECT dataset, count(*) AS n FROM ranking GROUP BY dataset"))
    assert json.loads(ranking) == [{"dataset": DATASET, "n": 5}]
    models = ok(cli(*sql, "SELECT model, count(*) AS n FROM sentence_scores GROUP BY model"))
    assert json.loads(models) == [{"model": MODEL, "n": 5}]


def test_demo_runs_end_to_end_on_three_samples(sqlite_url: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["--db", sqlite_url, "demo", "--samples", "3", "--out", str(out), "--model", f"tiny={tiny_model_dir}"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "$ selectit score --dataset alpaca-demo-3 --model tiny" in result.output
    assert "$ selectit audit --dataset alpaca-demo-3 --size 20" in result.output and "verdict: " in result.output
    assert (out / "report" / "index.html").is_file()
    selected = json.loads((out / "selective_alpaca.json").read_text(encoding="utf-8"))
    assert isinstance(selected, list) and all(set(r) == {"instruction", "input", "output"} for r in selected)
    again = CliRunner().invoke(main, args, catch_exceptions=False)  # a second run reuses every score
    assert again.exit_code == 0 and "scored 0 cells" in again.output


def test_a_command_on_the_default_store_names_it_on_stderr(tmp_path: Path, monkeypatch) -> None:
    """Neither --db nor $SELECTIT_DATABASE_URL: ./selectit.db, named in one line (created, then used);
    a store the user named gets no such line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SELECTIT_DATABASE_URL", raising=False)
    runner = CliRunner()
    first, again = runner.invoke(main, ["datasets"]), runner.invoke(main, ["datasets"])
    where = tmp_path.resolve() / "selectit.db"
    assert first.exit_code == 0 and first.stderr == f"created the store {where} (--db or $SELECTIT_DATABASE_URL to use another)\n"
    assert again.exit_code == 0 and again.stderr == f"using the store {where} (--db or $SELECTIT_DATABASE_URL to use another)\n"
    named = runner.invoke(main, ["--db", f"sqlite:///{tmp_path / 'other.db'}", "datasets"])
    assert named.exit_code == 0 and named.stderr == ""
