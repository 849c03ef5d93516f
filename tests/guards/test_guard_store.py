"""Opening the store: what is not a usable database gets one clear error line, and is left alone.

A text file, a read-only SQLite file, no server or a directory, unsupported or malformed URLs, a
server that never answers, an empty URL.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest
from guards import assert_one_error, file_digest, invoke, snapshot, sqlite_path

from selectit.store import db


# -------------------------------------------------------------------- a file that is not a database
@pytest.mark.parametrize("command", [["status"], ["datasets"], ["init"], ["ingest", "{data}", "--dataset", "x"],
                                     ["sql", "SELECT 1"], ["rank", "--dataset", "d"]])
def test_a_text_file_as_the_database_is_refused_and_left_alone(tmp_path: Path, command: list[str]) -> None:
    fake = tmp_path / "notes.db"
    fake.write_text("these are my notes, not a database\n" * 20)
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    digest = file_digest(fake)
    result = invoke("--db", f"sqlite:///{fake}", *[c.format(data=data) for c in command])
    assert_one_error(result, "not a SQLite database")
    assert file_digest(fake) == digest


# ----------------------------------------------------------------------------- a read-only database
@pytest.mark.parametrize("query", ["mode=ro&uri=true", "immutable=1&uri=true"])
@pytest.mark.parametrize("command", [["ingest", "{data}", "--dataset", "x"],
                                     ["prompts", "import", "{prompts}", "--set", "x", "--layout", "reference"]])
def test_a_read_only_database_refuses_writes(sqlite_url: str, tmp_path: Path, query: str, command: list[str]) -> None:
    db.upgrade(sqlite_url)
    path = sqlite_path(sqlite_url)
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    prompts = tmp_path / "p.txt"
    prompts.write_text("Rate it.\n")
    before = snapshot(sqlite_url)
    result = invoke("--db", f"sqlite:///file:{path}?{query}", *[c.format(data=data, prompts=prompts) for c in command])
    assert_one_error(result, "read-only")
    assert snapshot(sqlite_url) == before


# -------------------------------------------------------------------- unreachable or unknown stores
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [["init"], ["status"]])
def test_init_and_status_against_no_server_or_a_directory(tmp_path: Path, command: list[str]) -> None:
    url = f"postgresql://selectit@127.0.0.1:{_free_port()}/selectit"
    assert_one_error(invoke("--db", url, *command), "cannot connect")
    assert_one_error(invoke("--db", f"sqlite:///{tmp_path}", *command), "directory")


@pytest.mark.parametrize("url, phrase", [
    ("mysql://u@localhost/x", "sqlite"),
    ("notaurl", "not a database URL"),
    ("postgresql+nosuchdriver://u@h/x", "sqlite"),
])
@pytest.mark.parametrize("command", [["init"], ["status"], ["sql", "SELECT 1"]])
def test_unsupported_or_malformed_urls_are_refused(url: str, phrase: str, command: list[str]) -> None:
    assert_one_error(invoke("--db", url, *command), phrase)


# ---------------------------------------------------------------------- a server that never answers
def test_a_silent_server_times_out(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:  # accept and never say a word
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        env = {"SELECTIT_CONNECT_TIMEOUT": "2"}
        result = invoke("--db", f"postgresql://u@127.0.0.1:{port}/x", "status", env=env)
        assert_one_error(result, "did not answer", "SELECTIT_CONNECT_TIMEOUT")
    finally:
        stop.set()
        thread.join()
        for s in accepted:
            s.close()
        listener.close()


# ------------------------------------------------------------------------------------- an empty URL
def test_an_empty_database_url_is_an_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_error(invoke("--db", "", "status"), "empty")
    assert_one_error(invoke("status", env={db.URL_ENV: ""}), "empty", db.URL_ENV)
    assert list(tmp_path.iterdir()) == []
