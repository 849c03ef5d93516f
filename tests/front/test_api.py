"""The Python API (`selectit.open`): the README's notebook session runs as written, and the Store's
methods return what the CLI prints, as Arrow tables.

The notebook runs with the tiny random Llama of tests/tiny_model.py in place of SmolLM2 (the only
change made to the README's text), in a temporary directory.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

import selectit
from selectit.ranking import Ranking
from selectit.cli import main
from selectit.errors import NoSuchSelection, SelectitError

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "selectit" / "data" / "alpaca_en_demo.json"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def notebook_code() -> str:
    """The python block that follows `<!-- notebook -->` in the README."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- notebook -->\s*```python\n(.*?)```", readme, re.S)
    assert match, "README.md has no python block after <!-- notebook -->"
    return match.group(1)


def test_the_readme_notebook_session_is_ten_lines_and_runs(tmp_path: Path, tiny_dir: Path, monkeypatch) -> None:
    code = notebook_code()
    statements = [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert len(statements) <= 11, statements  # the import and ten lines
    assert '"smollm2-135m"' in code and '"alpaca_en_demo.json"' in code
    code = code.replace('"smollm2-135m"', json.dumps(str(tiny_dir)))
    monkeypatch.chdir(tmp_path)
    # The data comes from the installed package, as the README's comment says.
    assert CliRunner().invoke(main, ["demo-data", "alpaca_en_demo.json"]).exit_code == 0
    assert (tmp_path / "alpaca_en_demo.json").read_bytes() == DEMO.read_bytes()
    namespace: dict = {}
    exec(compile(code, "README.md notebook", "exec"), namespace)  # noqa: S102 - our own README
    ranking = namespace["ranking"]
    assert isinstance(ranking, pa.Table)
    assert ranking.column_names == ["rank", "sample_id", "position", "s_model", "instruction", "input", "output"]
    assert ranking.num_rows == 40 and ranking["rank"].to_pylist() == list(range(1, 41))
    exported = [json.loads(line) for line in (tmp_path / "demo-top.jsonl").read_text().splitlines()]
    assert len(exported) == 8 and all(r["messages"][-1]["role"] == "assistant" for r in exported)
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert info["demo-top"]["formatting"] == "sharegpt" and info["demo-top"]["file_name"] == "demo-top.jsonl"
    assert (tmp_path / "demo-top.jsonl.README.md").exists()


def test_import_selectit_and_open_do_not_import_torch(tmp_path: Path) -> None:
    code = (f"import sys, selectit; s = selectit.open({str(tmp_path / 'x.db')!r}); s.datasets(); "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "ok\n"


def test_store_methods(tmp_path: Path) -> None:
    from test_export import ALPACA, score_everything

    path = tmp_path / "a.json"
    path.write_text(json.dumps(ALPACA), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 's.db'}"
    with selectit.open(url) as store:
        result = store.ingest(path, dataset="d")
        assert (result.read, result.new) == (4, 4)
        assert store.datasets().column("name").to_pylist() == ["d"]
        score_everything(url)
        full = store.rank("d", ranking=Ranking(prompt_set="s"))
        assert full.num_rows == 4
        top = store.rank("d", ranking=Ranking(prompt_set="s"), top_n=2)
        assert top.to_pylist() == full.slice(0, 2).to_pylist()
        other = store.rank("d", ranking=Ranking(prompt_set="s", alpha=1.0, formula="reference-code"))
        assert other["s_model"].to_pylist() != full["s_model"].to_pylist()
        info = store.select("best", dataset="d", ranking=Ranking(prompt_set="s"), top_n=2)
        assert (info.name, info.n_selected, info.n_rankable) == ("best", 2, 4)
        written = store.export(tmp_path / "best.json", selection="best")
        assert written.format == "alpaca-json" and written.n == 2  # the input's own format (original)
        assert json.loads((tmp_path / "best.json").read_text()) == [
            ALPACA[i - 1] for i in full["sample_id"].to_pylist()[:2]]
        table = store.sql("SELECT count(*) AS n FROM store.samples")
        assert table.to_pylist() == [{"n": 4}]
        assert table.to_pandas()["n"].tolist() == [4]
    # A path works as well as a URL.
    with selectit.open(tmp_path / "s.db") as again:
        assert again.datasets().num_rows == 1


def test_demo_data_writes_a_new_file_and_never_replaces_one(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(main, ["demo-data", str(tmp_path)])  # a directory: the file's own name inside
    assert first.exit_code == 0, first.output
    assert first.output == f"wrote {tmp_path / 'alpaca_en_demo.json'} (999 Alpaca-format records)\n"
    assert len(json.loads((tmp_path / "alpaca_en_demo.json").read_text())) == 999
    mine = tmp_path / "mine.json"
    mine.write_text("keep me")
    again = runner.invoke(main, ["demo-data", str(mine)])
    assert again.exit_code == 1
    assert again.output == f"Error: {mine} already exists; give another path (selectit never replaces a file)\n"
    assert mine.read_text() == "keep me"


@pytest.mark.parametrize("kind", ["arrow", "pandas", "datasets"])
def test_ingest_takes_a_table_in_memory(tmp_path: Path, kind: str) -> None:
    from test_export import ALPACA

    table = pa.Table.from_pylist([{k: r[k] for k in ("instruction", "input", "output", "category")} for r in ALPACA])
    data = {"arrow": lambda: table, "pandas": table.to_pandas,
            "datasets": lambda: __import__("datasets").Dataset(table)}[kind]()
    with selectit.open(tmp_path / "s.db") as store:
        result = store.ingest(data, dataset="d")
        assert (result.read, result.new, result.path) == (4, 4, f"<in-memory {type(data).__name__}>")
        from_file = tmp_path / "a.json"
        from_file.write_text(json.dumps(ALPACA), encoding="utf-8")
        assert store.ingest(from_file, dataset="d").new == 0  # the same samples: same content hashes
        assert store.datasets().to_pylist()[0]["source"] == f"<in-memory {type(data).__name__}>"
        with pytest.raises(SelectitError, match=r"^cannot ingest a builtins.dict: give a path, a pyarrow.Table"):
            store.ingest({"instruction": "x"}, dataset="d")
        with pytest.raises(SelectitError, match=r"^split names a split of a Hub dataset .* a table in memory has none"):
            store.ingest(data, dataset="other", split="train")  # never silently ignored
        assert [r["name"] for r in store.datasets().to_pylist()] == ["d"]  # nothing half-written


def test_selection_returns_the_frozen_rows_with_texts_and_originals(tmp_path: Path) -> None:
    from test_export import ALPACA, score_everything

    path = tmp_path / "a.json"
    path.write_text(json.dumps(ALPACA), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 's.db'}"
    with selectit.open(url) as store:
        store.ingest(path, dataset="d")
        score_everything(url)
        ranking = store.rank("d", ranking=Ranking(prompt_set="s"))
        store.select("best", dataset="d", ranking=Ranking(prompt_set="s"), top_n=3)
        store.ingest(path, dataset="later")  # later data changes nothing frozen
        chosen = store.selection("best")
        assert chosen.column_names == ["rank", "sample_id", "score", "instruction", "input", "output",
                                       "position", "original_id", "original"]
        assert chosen["sample_id"].to_pylist() == ranking["sample_id"].to_pylist()[:3]
        assert chosen["score"].to_pylist() == ranking["s_model"].to_pylist()[:3]
        for row in chosen.to_pylist():
            assert json.loads(row["original"]) == ALPACA[row["position"]]
            assert row["instruction"] == ALPACA[row["position"]]["instruction"]
        with pytest.raises(NoSuchSelection, match=r"^no selection named 'nope' \(selections: best\)"):
            store.selection("nope")


def test_score_progress_true_draws_a_tqdm_bar(tmp_path: Path, tiny_dir: Path, capsys) -> None:
    from test_export import ALPACA

    path = tmp_path / "a.json"
    path.write_text(json.dumps(ALPACA), encoding="utf-8")
    with selectit.open(tmp_path / "s.db") as store:
        store.ingest(path, dataset="d")
        store.add_model("tiny", source=str(tiny_dir), dtype="float32")
        summary = store.score(dataset="d", progress=True)
    assert summary.scored == 4 * 5
    err = capsys.readouterr().err
    assert "scoring: 100%" in err and "20/20" in err
    assert "00:00 left]" in err  # its time left, by tokens (jobs/test_progress.py)
