"""`selectit ingest OWNER/NAME`: a Hugging Face Hub dataset read from the local cache, offline.

Each test builds a real cache under tmp_path, as the Hugging Face libraries lay it out, and runs
the real CLI in a subprocess with HF_HOME pointing there (the libraries read it at import). The
subprocess gets no offline variables from the test (selectit must set them) and a proxy on a
closed port, so any attempt to reach the Hub would fail; there is no network here either way.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selectit.io.readers import hub_id

TRAIN = [{"instruction": "Give three tips for staying healthy.", "input": "", "output": "Eat, sleep, move."},
         {"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
         {"instruction": "Add 2 and 3.", "input": "", "output": "5"}]
TEST = [{"instruction": "Name a colour.", "input": "", "output": "Blue."}]
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_snapshot(hf_home: Path, repo_id: str, splits: dict[str, list[dict]]) -> Path:
    """What `hf download --repo-type dataset REPO_ID` leaves: blobs named by their sha256, a
    snapshot of symlinks to them under the commit, and refs/main naming that commit."""
    repo = hf_home / "hub" / f"datasets--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    (snapshot / "data").mkdir(parents=True)
    (repo / "blobs").mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for split, rows in splits.items():
        staging = hf_home / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), staging)
        blob = repo / "blobs" / hashlib.sha256(staging.read_bytes()).hexdigest()
        staging.rename(blob)
        link = snapshot / "data" / f"{split}-00000-of-00001.parquet"
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def prepared_cache(hf_home: Path, repo_id: str, rows: list[dict], tmp_path: Path) -> Path:
    """What an earlier online `datasets.load_dataset(REPO_ID)` leaves in the `datasets` cache:
    HF_DATASETS_CACHE/owner___name/default/0.0.0/<hash>/ with dataset_info.json and Arrow files
    (built here by `datasets`' own Parquet builder, then moved where the Hub loader puts it)."""
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet

    owner, name = repo_id.split("/")
    source = tmp_path / "source.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    builder = Parquet(cache_dir=str(tmp_path / "build"), dataset_name=camelcase_to_snakecase(name),
                      data_files={"train": str(source)}, hash="c0ffee")
    builder.download_and_prepare()
    target = hf_home / "datasets" / f"{owner}___{camelcase_to_snakecase(name)}" / "default" / "0.0.0"
    target.mkdir(parents=True)
    Path(builder.cache_dir).rename(target / "c0ffee")
    source.unlink()  # only the cache remains
    return target / "c0ffee"


@pytest.fixture
def run(tmp_path: Path):  # noqa: ANN201
    """Run `selectit --db <sqlite> ARGS` in a fresh interpreter with HF_HOME=tmp_path/hf."""
    db = tmp_path / "store.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", NO_PROXY="", no_proxy="")

    def invoke(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "selectit", "--db", f"sqlite:///{db}", *args],
                              capture_output=True, text=True, env={**env, **(extra_env or {})}, cwd=tmp_path,
                              timeout=300)

    invoke.db = db  # type: ignore[attr-defined]
    return invoke


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def failed(result: subprocess.CompletedProcess) -> str:
    """The one `Error:` line of a failed command (exit 1, no traceback)."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("Error: ")]
    return line


def stored(db: Path, dataset: str) -> list[dict]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT s.instruction, s.input, s.output FROM dataset_samples m JOIN samples s ON s.id = m.sample_id "
            "JOIN datasets d ON d.id = m.dataset_id WHERE d.name = ? ORDER BY m.position", (dataset,)).fetchall()
    return [{"instruction": i, "input": n, "output": o} for i, n, o in rows]


def table(db: Path, sql: str) -> list[tuple]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_hub_id_is_owner_slash_name_that_names_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert hub_id("tatsu-lab/alpaca") == "tatsu-lab/alpaca"
    assert hub_id("HuggingFaceH4/ultrachat_200k") == "HuggingFaceH4/ultrachat_200k"
    assert hub_id("alpaca") is None and hub_id("a/b/c") is None and hub_id("../x") is None
    assert hub_id("/abs/path") is None and hub_id("./a/b") is None
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.json").write_text("[]")
    assert hub_id("data/a.json") is None  # an existing file is a file


def test_a_downloaded_snapshot_is_ingested_offline_and_named_by_its_id(run, tmp_path: Path) -> None:
    hub_snapshot(tmp_path / "hf", "owner/name", {"train": TRAIN, "test": TEST})
    out = ok(run("ingest", "owner/name", "--dataset", "d"))  # two splits: train by default
    assert "d: read 3, new 3, duplicates 0, invalid 0" in out
    assert stored(run.db, "d") == TRAIN
    assert table(run.db, "SELECT path, format, container, split FROM ingests") == [
        ("owner/name", "hf-dir", "hf-dir", None)]
    assert table(run.db, "SELECT name, source FROM datasets") == [("d", "owner/name")]

    ok(run("ingest", "owner/name", "--dataset", "t", "--split", "test"))
    assert stored(run.db, "t") == TEST
    assert "new 0" in ok(run("ingest", "owner/name", "--dataset", "d", "--split", "train"))  # re-ingest adds nothing


def test_an_unknown_split_names_the_splits_and_writes_nothing(run, tmp_path: Path) -> None:
    hub_snapshot(tmp_path / "hf", "owner/name", {"train": TRAIN, "test": TEST})
    line = failed(run("ingest", "owner/name", "--dataset", "d", "--split", "validation"))
    assert line == ("Error: owner/name has no split 'validation' (splits: test, train). Nothing was ingested; "
                    "choose one with --split.")
    assert table(run.db, "SELECT * FROM datasets") == []


def test_several_splits_without_train_need_split(run, tmp_path: Path) -> None:
    hub_snapshot(tmp_path / "hf", "owner/name", {"train_sft": TRAIN, "test_sft": TEST})
    line = failed(run("ingest", "owner/name", "--dataset", "d"))
    assert "owner/name has the splits test_sft, train_sft and none is called train" in line
    assert "--split test_sft" in line
    ok(run("ingest", "owner/name", "--dataset", "d", "--split", "train_sft"))
    assert stored(run.db, "d") == TRAIN


def test_a_dataset_not_in_the_cache_says_how_to_get_it(run, tmp_path: Path) -> None:
    hub_snapshot(tmp_path / "hf", "owner/name", {"train": TRAIN})
    line = failed(run("ingest", "owner/missing", "--dataset", "d"))
    assert line.startswith(f"Error: owner/missing is not a file and not a dataset in the local Hugging Face "
                           f"cache (HF_HOME={tmp_path / 'hf'};")
    assert "download it first where there is network, e.g. `hf download --repo-type dataset owner/missing`" in line
    assert line.endswith("or give a file.")
    assert table(run.db, "SELECT * FROM datasets") == []
    # A path that is not an id stays a missing file.
    assert failed(run("ingest", "missing.json", "--dataset", "d")) == (
        "Error: missing.json: no such file. Nothing was ingested; check the path.")


def test_hf_hub_cache_is_respected(run, tmp_path: Path) -> None:
    hub_snapshot(tmp_path / "elsewhere", "owner/name", {"train": TRAIN})
    ok(run("ingest", "owner/name", "--dataset", "d", extra_env={"HF_HUB_CACHE": str(tmp_path / "elsewhere" / "hub")}))
    assert stored(run.db, "d") == TRAIN


def test_the_datasets_cache_of_an_earlier_load_dataset_is_read_with_map(run, tmp_path: Path) -> None:
    rows = [{"question": r["instruction"], "context": r["input"], "answer": r["output"]} for r in TRAIN]
    prepared_cache(tmp_path / "hf", "owner/DollyLike", rows, tmp_path)
    line = failed(run("ingest", "owner/DollyLike", "--dataset", "d"))  # columns detected as for any table
    assert "--map" in line and "question" in line
    ok(run("ingest", "owner/DollyLike", "--dataset", "d", "--map", "instruction=question,input=context,output=answer"))
    assert stored(run.db, "d") == TRAIN
    assert table(run.db, "SELECT path FROM ingests") == [("owner/DollyLike",)]


def test_without_datasets_installed_it_says_what_to_install(run, tmp_path: Path) -> None:
    blocker = tmp_path / "no_datasets" / "datasets"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('datasets is not installed')\n")
    line = failed(run("ingest", "owner/name", "--dataset", "d",
                      extra_env={"PYTHONPATH": str(tmp_path / "no_datasets")}))
    assert "owner/name: no such file" in line and "`pip install 'selectit[hf]'`" in line
