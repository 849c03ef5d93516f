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

import selectit

ROOT = Path(__file__).resolve().parent.parent
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
    assert '"smollm2-135m"' in code and "selectit/data/alpaca_en_demo.json" in code
    code = code.replace('"smollm2-135m"', json.dumps(str(tiny_dir))).replace(
        "selectit/data/alpaca_en_demo.json", str(DEMO))
    monkeypatch.chdir(tmp_path)
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
    from test_data_io import ALPACA, score_everything

    path = tmp_path / "a.json"
    path.write_text(json.dumps(ALPACA), encoding="utf-8")
    url = f"sqlite:///{tmp_path / 's.db'}"
    with selectit.open(url) as store:
        result = store.ingest(path, dataset="d")
        assert (result.read, result.new) == (4, 4)
        assert store.datasets().column("name").to_pylist() == ["d"]
        score_everything(url)
        full = store.rank("d", prompt_set="s")
        assert full.num_rows == 4
        top = store.rank("d", prompt_set="s", top_n=2)
        assert top.to_pylist() == full.slice(0, 2).to_pylist()
        other = store.rank("d", prompt_set="s", alpha=1.0, formula="reference-code")
        assert other["s_model"].to_pylist() != full["s_model"].to_pylist()
        info = store.select("best", dataset="d", prompt_set="s", top_n=2)
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
