"""Reading commands answer while a writer holds SQLite's write lock (a long ingest's transaction).

Reads begin deferred and, under WAL, see the last commit beside the writer; writers still begin
IMMEDIATE and queue on the busy timeout. The busy timeout is cut to 2 s so that a reader that
waited for the lock fails quickly instead of after a minute.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from guards import invoke
from test_views import seed

from selectit.store import db


@pytest.fixture
def held_write_lock(sqlite_url: str, monkeypatch):  # noqa: ANN201
    """A store with a scored dataset `d`, and another connection inside an uncommitted write."""
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 2000)
    engine = db.open_store(sqlite_url)
    seed(engine)
    engine.dispose()
    writer = sqlite3.connect(Path(sqlite_url.removeprefix("sqlite:///")), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO datasets (name, source) VALUES ('uncommitted', 'writer')")
    yield sqlite_url
    writer.execute("ROLLBACK")
    writer.close()


@pytest.mark.parametrize("args", [
    ["status"], ["datasets"], ["models"], ["prompts"],
    ["sql", "SELECT name FROM store.datasets ORDER BY name"],
    ["rank", "--dataset", "d", "--prompt-set", "s"],
])
def test_reads_answer_beside_a_running_writer(held_write_lock: str, args: list[str]) -> None:
    result = invoke("--db", held_write_lock, *args)
    assert result.exit_code == 0, result.output
    assert "uncommitted" not in result.output  # the last commit, not the writer's rows
    if args[0] in ("status", "datasets", "sql", "rank"):
        assert " d " in result.output or "d:" in result.output, result.output


def test_exports_answer_beside_a_running_writer(sqlite_url: str, tmp_path: Path, monkeypatch) -> None:
    """An export of a frozen selection or of the current ranking only reads the store: it must not
    wait for the write lock of a long ingest or score run (it did, and failed after the timeout)."""
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 2000)
    engine = db.open_store(sqlite_url)
    seed(engine)
    engine.dispose()
    frozen = invoke("--db", sqlite_url, "select", "best", "--dataset", "d", "--prompt-set", "s", "--top", "0.5")
    assert frozen.exit_code == 0, frozen.output
    writer = sqlite3.connect(Path(sqlite_url.removeprefix("sqlite:///")), isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    try:
        exported = []
        for args, out in ((["--selection", "best"], tmp_path / "frozen.json"),
                          (["--dataset", "d", "--prompt-set", "s", "--top", "0.5"], tmp_path / "current.json")):
            result = invoke("--db", sqlite_url, "export", *args, "--out", out)
            assert result.exit_code == 0, result.output
            exported.append([r["instruction"] for r in json.loads(out.read_text())])
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert exported[0] == exported[1] and exported[0]  # the frozen top is the current top, nothing missing


def test_writers_still_queue_for_the_lock(held_write_lock: str, tmp_path: Path) -> None:
    data = tmp_path / "a.jsonl"
    data.write_text('{"instruction": "Say hi.", "input": "", "output": "Hi."}\n')
    result = invoke("--db", held_write_lock, "ingest", data, "--dataset", "new")
    assert result.exit_code == 1 and "database is locked" in result.output, result.output
