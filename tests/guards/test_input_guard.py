"""Inputs that used to hang, crash or be stored wrong: each gives one `Error:` line (or the right
result), through the CLI and, for the library's errors, through `selectit.open()` too.

Non-regular files and standard input; a broker that never answers and the re-send of jobs that a
failed plan left queued (the real Redis of tests/run.sh); bad URL parts, huge numbers, deep JSON,
a database from a newer selectit; model configs and context lengths; the Python API's errors and
`Store.sql` results (HUGEINT, duplicate column names) and `sql --format json`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from guards import assert_one_error, invoke, snapshot
from test_views import seed as seed_scores
from test_runner import DEMO, _selectit, add_model
from test_runner import seed as seed_dataset

import selectit
from selectit.errors import SelectitError
from selectit.store import db
from selectit.store.schema import Job

GOOD = '{"instruction": "Say hi.", "input": "", "output": "Hi."}\n'


# ------------------------------------------------------------------------------ item: files and stdin
def test_non_regular_files_are_refused_and_dash_reads_stdin(sqlite_url: str, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    for path in ("/dev/zero", fifo):
        assert_one_error(invoke("--db", sqlite_url, "ingest", path, "--dataset", "d", "--format", "jsonl"),
                         "not a regular file", str(path))
    piped = subprocess.run([sys.executable, "-m", "selectit", "--db", sqlite_url, "ingest", "-", "--dataset", "piped"],
                           input=(GOOD * 2 + GOOD.replace("hi", "bye")).encode(), capture_output=True, timeout=120)
    assert piped.returncode == 0 and b"read 3, new 2, duplicates 1" in piped.stdout, piped
    engine = db.open_store(sqlite_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT source FROM datasets WHERE name = 'piped'")).scalar_one() == "<stdin>"
    engine.dispose()


# ------------------------------------------------------------------------------ item: the broker
def test_a_silent_broker_fails_the_plan_and_the_next_plan_resends(postgres_url: str, tmp_path: Path,
                                                                  tiny_model_dir: Path, redis_url: str) -> None:
    import redis

    engine = db.open_store(postgres_url)
    seed_dataset(engine, tmp_path, "d", DEMO[:4])
    add_model(engine, "tiny", tiny_model_dir)
    silent = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    env = {"SELECTIT_BROKER_URL": f"redis://127.0.0.1:{silent.getsockname()[1]}/0", "SELECTIT_BROKER_TIMEOUT": "1",
           "SELECTIT_JOB_TOKENS": "1000"}
    out, _ = _selectit(postgres_url, "plan", env=env).communicate(timeout=300)  # hung for ever before
    silent.close()
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: planned ") and "run `selectit plan` again" in lines[0], out
    with db.session_scope(engine) as session:
        n_jobs = session.scalar(sa.select(sa.func.count()).select_from(Job).where(Job.status == "queued"))
    assert n_jobs > 1
    broker = redis.Redis.from_url(redis_url)
    broker.flushdb()
    env["SELECTIT_BROKER_URL"] = redis_url
    out, _ = _selectit(postgres_url, "plan", env=env).communicate(timeout=120)
    assert f"planned 0 new job(s), sent 0 to the broker; re-sent {n_jobs} queued job(s)" in out, out
    assert broker.llen("model.tiny") == n_jobs
    out, _ = _selectit(postgres_url, "plan", env=env).communicate(timeout=120)  # the queue is full: nothing again
    assert "planned 0 new job(s), sent 0 to the broker." in out and broker.llen("model.tiny") == n_jobs, out
    broker.flushdb()
    engine.dispose()


# ------------------------------------------------------------------------------ item: URLs and numbers
@pytest.mark.parametrize(("url", "phrase"), [
    ("postgresql://u@127.0.0.1:notaport/x", "bad part"),
    ("sqlite:///{tmp}/a.db?timeout=abc", "timeout=abc"),
    ("sqlite:///{tmp}/a.db?check_same_thread=maybe", "maybe"),
    ("mysql://u@h/x", "not mysql"),
])
def test_bad_url_parts_give_one_error_line(url: str, phrase: str, tmp_path: Path) -> None:
    url = url.format(tmp=tmp_path)
    for args in (["status"], ["init"]):
        assert_one_error(invoke("--db", url, *args), phrase)
    with pytest.raises(SelectitError, match=phrase.replace("?", r"\?")):
        selectit.open(url)
    assert not (tmp_path / "a.db").exists()


def test_a_database_of_a_newer_selectit_is_named_so(db_url: str) -> None:
    db.upgrade(db_url)
    engine = db.make_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    before = snapshot(db_url)
    for args in (["init"], ["status"]):
        assert_one_error(invoke("--db", db_url, *args), "created by a newer selectit", "upgrade selectit")
    with pytest.raises(SelectitError, match="newer selectit"):
        selectit.open(db_url)
    assert snapshot(db_url) == before


def test_huge_numbers_and_deep_json_give_one_error_line(engine, db_url: str, tiny_model_dir: Path) -> None:
    seed_scores(engine)
    ranked = invoke("--db", db_url, "rank", "--dataset", "d", "--prompt-set", "s", "--limit", str(2**63))
    assert ranked.exit_code == 0 and "first 3" in ranked.output, ranked.output
    assert_one_error(invoke("--db", db_url, "model", "add", "m", "--source", tiny_model_dir, "--max-tokens",
                            str(2**70)), "--max-tokens")
    deep = "[" * 100_000 + "]" * 100_000
    assert_one_error(invoke("--db", db_url, "score", "--engine", "vllm", "--vllm-args", deep), "--vllm-args")


def test_model_context_lengths_are_checked(engine, db_url: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    import shutil

    added = invoke("--db", db_url, "model", "add", "tiny", "--source", tiny_model_dir, "--dtype", "float32")
    assert added.exit_code == 0, added.output
    # the tiny model's context is 1,024 tokens (tests/tiny_model.py)
    assert_one_error(invoke("--db", db_url, "model", "add", "tiny", "--source", tiny_model_dir, "--dtype", "float32",
                            "--max-tokens", "9000000"), "beyond the context", "1024")
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    config = json.loads((broken / "config.json").read_text())
    config["max_position_embeddings"] = -5
    (broken / "config.json").write_text(json.dumps(config))
    assert_one_error(invoke("--db", db_url, "model", "add", "broken", "--source", broken), "max_position_embeddings")


# ------------------------------------------------------------------------------ item: the Python API
# (its refusals are the CLI's Error lines: tests/guards/test_guard_api.py)
def test_store_sql_keeps_hugeint_and_duplicate_columns(engine, db_url: str) -> None:
    seed_scores(engine)
    huge = 2**100 + 7
    with selectit.open(db_url) as store:
        table = store.sql(f"SELECT 1 AS a, 2 AS a, {huge}::HUGEINT AS h, 'nan'::DOUBLE AS x")
    assert table.column_names == ["a", "a", "h", "x"]
    assert table.column(0).to_pylist() == [1] and table.column(1).to_pylist() == [2]
    assert int(table.column(2).to_pylist()[0]) == huge
    result = invoke("--db", db_url, "sql", f"SELECT 1 AS a, 2 AS a, {huge}::HUGEINT AS h, 'nan'::DOUBLE AS x, "
                                           "['inf'::DOUBLE, 1.5] AS l", "--format", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == [{"a": 1, "a_2": 2, "h": huge, "x": None, "l": [None, 1.5]}]


# ------------------------------------------------------------------------------ items: validation
def _ranking(db_url: str, weights: str) -> list[str]:
    result = invoke("--db", db_url, "sql", "SELECT sample_id, s_model FROM ranking ORDER BY rank", "--format", "csv",
                    "--prompt-set", "s", "--weights", weights)
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def test_huge_weights_keep_their_ratio(engine, db_url: str) -> None:
    seed_scores(engine)
    # θ_A = θ_B either way: the same shares, so the same ranking and scores (the sum 2e308 overflowed to inf)
    assert _ranking(db_url, "A=1e308,B=1e308") == _ranking(db_url, "A=1,B=1")
    assert _ranking(db_url, "A=1e308,B=3e307") == _ranking(db_url, "A=10,B=3")


@pytest.mark.parametrize("args", [
    ["rank", "--dataset", "d", "--prompt-set", "s", "--weights", "A=1,A=2"],
    ["rank", "--dataset", "d", "--prompt-set", "s", "--models", "A,A"],
    ["rank", "--dataset", "d", "--prompt-set", "s", "--models", ","],
    ["rank", "--dataset", "d", "--prompt-set", ""],
])
def test_ambiguous_fusion_options_are_refused(engine, db_url: str, args: list[str]) -> None:
    seed_scores(engine)
    result = invoke("--db", db_url, *args)
    assert result.exit_code in (1, 2) and "Error: " in result.output and "Traceback" not in result.output, result.output


def test_export_of_a_frozen_selection_refuses_criterion_options(engine, db_url: str, tmp_path: Path) -> None:
    seed_scores(engine)
    frozen = invoke("--db", db_url, "select", "v1", "--dataset", "d", "--prompt-set", "s", "--top", "0.5")
    assert frozen.exit_code == 0, frozen.output
    out = tmp_path / "out.json"
    assert_one_error(invoke("--db", db_url, "export", "--selection", "v1", "--top-n", "1", "--out", out), "frozen")
    assert not out.exists()


def test_report_prints_model_names_with_math_characters_as_text(engine, db_url: str, tmp_path: Path) -> None:
    from test_views import T1, T2, T3

    names = ("$x^$", "\\foo_{")
    seed_scores(engine, {"s1": {names[0]: (T1, T2, T3), names[1]: (T3, T1, T2)},
                         "s2": {names[0]: (T2, T2, T1), names[1]: (T1, T1, T3)}})
    result = invoke("--db", db_url, "report", "--dataset", "d", "--prompt-set", "s", "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "rep" / "index.html").read_text(encoding="utf-8")
    assert "$x^$" in page or "$x^$".replace("$", "&#36;") in page or "x^" in page


def test_names_and_columns_that_would_be_read_wrong_are_refused(engine, db_url: str, tmp_path: Path) -> None:
    seed_scores(engine)
    data = tmp_path / "a.jsonl"
    data.write_text(GOOD)
    before = snapshot(db_url)
    for name in ("\u200b\u200b", "\u2066\u2069", "evil\u202etxt.exe"):
        assert_one_error(invoke("--db", db_url, "ingest", data, "--dataset", name), "name")
    doubled = tmp_path / "doubled.csv"
    doubled.write_text("instruction,output,output\nSay hi.,Hi.,Bye.\n")
    assert_one_error(invoke("--db", db_url, "ingest", doubled, "--dataset", "x"), "'output' twice")
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"q": "Say hi.", "a": "Hi.", "b": "Bye."}\n')
    assert_one_error(invoke("--db", db_url, "ingest", qa, "--dataset", "x", "--map", "instruction=q,output=a,output=b"),
                     "output twice")
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"system": ["be nice"], "conversations": [{"from": "human", "value": "hi"},
                                                                          {"from": "gpt", "value": "hello"}]}) + "\n")
    assert_one_error(invoke("--db", db_url, "ingest", chat, "--dataset", "x"), "'system' is not text")
    out = tmp_path / "o.json"
    assert_one_error(invoke("--db", db_url, "export", "--dataset", "d", "--prompt-set", "s", "--out", out,
                            "--llamafactory", "two\nlines"), "LLaMA-Factory")
    assert not out.exists() and snapshot(db_url) == before


def test_a_bom_is_no_part_of_the_first_prompt(engine, db_url: str, tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_bytes("\ufeffRate it: \n".encode())
    result = invoke("--db", db_url, "prompts", "import", prompts, "--set", "bom", "--layout", "reference")
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT template FROM prompts WHERE set_name = 'bom'")).scalar_one() == "Rate it: \n"


def test_long_fields_and_lines(sqlite_url: str, tmp_path: Path, monkeypatch) -> None:
    long = "x" * 200_000  # over csv's default limit of 131,072 characters
    data = tmp_path / "long.csv"
    data.write_text(f"instruction,input,output\nSay it.,,{long}\n")
    result = invoke("--db", sqlite_url, "ingest", data, "--dataset", "long")
    assert result.exit_code == 0 and "new 1" in result.output, result.output
    from selectit.io import readers as formats

    monkeypatch.setattr(formats, "MAX_RECORD_BYTES", 1000)  # a line beyond the record-size limit is not read whole
    lines = tmp_path / "long.jsonl"
    lines.write_text(GOOD + json.dumps({"instruction": "a", "input": "", "output": "y" * 5000}) + "\n")
    assert_one_error(invoke("--db", sqlite_url, "ingest", lines, "--dataset", "lines"), "line 2", "long.jsonl")
    assert_one_error(invoke("--db", sqlite_url, "ingest", data, "--dataset", "long2"), "long.csv", "field larger")


def test_a_record_over_the_size_limit_is_refused_in_a_json_list_too(sqlite_url: str, tmp_path: Path,
                                                                   monkeypatch) -> None:
    """A JSON list's record is held to the JSON Lines cap (64 MiB): one error naming the record."""
    from selectit.io import readers

    assert readers.MAX_RECORD_BYTES == 64 * 2**20
    monkeypatch.setattr(readers, "MAX_RECORD_BYTES", 1000)
    good = json.loads(GOOD)
    data = tmp_path / "big.json"
    data.write_text(json.dumps([good, {"instruction": "a", "input": "", "output": "é" * 600}, good]))  # 1,200 bytes
    assert_one_error(invoke("--db", sqlite_url, "ingest", data, "--dataset", "big"),
                     "big.json, record 2: longer than 1,000 bytes, the most one record may take", "--skip-invalid")
    result = invoke("--db", sqlite_url, "ingest", data, "--dataset", "big", "--skip-invalid")
    assert result.exit_code == 0 and "record 2: longer than 1,000 bytes" in result.output, result.output


def test_unwritable_and_full_targets_give_one_error_line(engine, db_url: str, tmp_path: Path) -> None:
    seed_scores(engine)
    for args in (["report", "--dataset", "d", "--prompt-set", "s", "--out", "/proc/selectit-report"],
                 ["export", "--dataset", "d", "--prompt-set", "s", "--out", "/proc/selectit.json"]):
        assert_one_error(invoke("--db", db_url, *args), "/proc")
    if os.geteuid() != 0:
        return  # a small full disk needs a tmpfs mount
    full = tmp_path / "full"
    full.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32k", "tmpfs", str(full)], check=False).returncode:
        return
    try:
        (full / "pad").write_bytes(b"\0" * 28_000)
        line = assert_one_error(invoke("--db", db_url, "report", "--dataset", "d", "--prompt-set", "s", "--out",
                                       full / "rep"), "No space left on device")
        assert str(full / "rep") in line or str(full) in line, line
    finally:
        subprocess.run(["umount", str(full)], check=False)
