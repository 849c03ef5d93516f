"""`selectit ingest`: bad files get one clear error line and leave the store as it was.

Deep nesting, files without records, UTF-16/32 text, truncated JSONL lines, JSON values of the
wrong type, a `history` that is not a list, and two ingests into one new dataset at once (PostgreSQL).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from guards import assert_one_error, invoke

from selectit.store import db

# ------------------------------------------------------------------------------------- deep nesting
DEEP = "[" * 10_000 + "]" * 10_000


def test_deep_nesting_is_an_invalid_record(cli, db_url: str, tmp_path: Path) -> None:
    good = json.dumps({"instruction": "i", "output": "o"})
    jsonl = tmp_path / "deep.jsonl"
    jsonl.write_text(good + "\n" + DEEP + "\n" + '{"instruction": ' + DEEP + ', "output": "o"}\n')
    assert_one_error(invoke("--db", db_url, "ingest", jsonl, "--dataset", "d"), "line 2", "nested too deeply")
    result = invoke("--db", db_url, "ingest", jsonl, "--dataset", "d", "--skip-invalid")
    assert result.exit_code == 0, result.output
    assert "d: read 3, new 1, duplicates 0, invalid 2" in result.output
    listing = tmp_path / "deep.json"
    listing.write_text("[" + good + ", " + DEEP + ', {"instruction": "j", "output": "p"}]')
    assert_one_error(invoke("--db", db_url, "ingest", listing, "--dataset", "e"), "record 2", "nested too deeply")
    result = invoke("--db", db_url, "ingest", listing, "--dataset", "e", "--skip-invalid")
    assert result.exit_code == 0, result.output
    assert "e: read 3, new 2, duplicates 0, invalid 1" in result.output


# ------------------------------------------------------------------- concurrent ingest, new dataset
def test_concurrent_ingests_into_a_new_dataset_both_succeed(postgres_url: str, tmp_path: Path) -> None:
    db.upgrade(postgres_url)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([{"instruction": f"a{i}", "output": "o"} for i in range(5)]))
    b.write_text(json.dumps([{"instruction": f"b{i}", "output": "o"} for i in range(3)]))
    engine = sa.create_engine(postgres_url)
    # Another ingest has created the dataset row and not committed yet; ours must wait, then join it.
    holder = engine.connect()
    tx = holder.begin()
    holder.execute(sa.text("INSERT INTO datasets (name, source, created_at) VALUES ('new', 'x', now())"))
    proc = subprocess.Popen([sys.executable, "-m", "selectit", "--db", postgres_url, "ingest", str(b),
                             "--dataset", "new"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Wait until it is blocked on our row lock. Autocommit: pg_stat_activity is a snapshot taken
    # once per transaction, so a watch inside one transaction would never see the wait begin.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watch:
        for _ in range(600):
            waiting = watch.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar()
            if waiting or proc.poll() is not None:
                break
            time.sleep(0.1)
    assert waiting == 1, "the second ingest never waited on the first one's dataset row"
    tx.commit()
    holder.close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.strip() == "new: read 3, new 3, duplicates 0, invalid 0"
    # Two real ingests at once, into another new dataset: both succeed, the counts add up.
    procs = [subprocess.Popen([sys.executable, "-m", "selectit", "--db", postgres_url, "ingest", str(f),
                               "--dataset", "both"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for f in (a, b)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM dataset_samples m JOIN datasets d ON d.id = m.dataset_id "
                                 "WHERE d.name = 'both'")).scalar()
    engine.dispose()
    assert n == 8


# --------------------------------------------------------------------------- a file without records
@pytest.mark.parametrize("content", ["[]", "[]\n", "  [ ]  ", ""])
def test_a_file_without_records_is_an_error(cli, db_url: str, tmp_path: Path, content: str) -> None:
    path = tmp_path / "none.json"
    path.write_text(content)
    assert_one_error(invoke("--db", db_url, "ingest", path, "--dataset", "nothing"), "Nothing was ingested")
    assert "nothing" not in cli("datasets").output


# ------------------------------------------------------------------------- encodings and JSON types
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_utf16_files_get_a_hint(cli, db_url: str, tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "wide.json"
    path.write_bytes(json.dumps([{"instruction": "i", "output": "o"}]).encode(encoding))
    assert_one_error(invoke("--db", db_url, "ingest", path, "--dataset", "w"),
                     "UTF-16" if "16" in encoding else "UTF-32", "iconv")


def test_a_truncated_jsonl_line_names_its_end(cli, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl"
    path.write_text('{"instruction": "i", "output": "o"}\n{"instruction": "a", "output": "b"\n')
    line = assert_one_error(invoke("--db", db_url, "ingest", path, "--dataset", "c"), "line 2")
    assert "column 1)" not in line and "column 35" in line


@pytest.mark.parametrize("content, phrase", [
    ("[null]", "null"),
    ("[1]", "number"),
    ('[["a"]]', "array"),
    ('[{"instruction": "i", "output": ["o"]}]', "array"),
    ('[{"instruction": "i", "output": null}]', "missing field 'output'"),
    ('[{"instruction": true, "output": "o"}]', "boolean"),
])
def test_messages_name_json_types_not_python_ones(cli, db_url: str, tmp_path: Path, content: str, phrase: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content)
    line = assert_one_error(invoke("--db", db_url, "ingest", path, "--dataset", "t"), phrase)
    for python_name in ("NoneType", "got list", "got dict", "got int", "got bool", "got float"):
        assert python_name not in line


@pytest.mark.parametrize("bad_id, phrase", [([1, 2], "field 'id'"), ({"a": 1}, "field 'id'"), (True, "field 'id'"),
                                            (float("nan"), "NaN is not valid JSON")])
def test_an_id_must_be_a_string_or_a_number(cli, db_url: str, tmp_path: Path, bad_id: object, phrase: str) -> None:
    path = tmp_path / "ids.json"
    path.write_text(json.dumps([{"instruction": "i", "output": "o", "id": bad_id}]))
    assert_one_error(invoke("--db", db_url, "ingest", path, "--dataset", "ids"), phrase)
    path.write_text(json.dumps([{"instruction": "i", "output": "o", "id": 7}, {"instruction": "j", "output": "o",
                                                                               "id": "x-1"}]))
    assert cli("ingest", path, "--dataset", "ids").exit_code == 0
    with db.make_engine(db_url).connect() as conn:
        ids = conn.execute(sa.text("SELECT original_id FROM dataset_samples ORDER BY position")).scalars().all()
    assert ids == ["7", "x-1"]


# ------------------------------------------------------------------ LLaMA-Factory's history field
@pytest.mark.parametrize("history, got", [
    (json.dumps([["2+2?", "4"]]), "a string"),  # JSON text in a string: not read as the list it spells
    ("an unrelated note", "a string"),
    (3, "a number"),
    ({"user": "2+2?", "assistant": "4"}, "an object"),
    (True, "a boolean"),
])
def test_a_history_that_is_not_a_list_is_an_invalid_record(cli, db_url: str, tmp_path: Path, history: object,
                                                           got: str) -> None:
    path = tmp_path / "h.jsonl"
    records = [{"instruction": "Hi", "output": "Hello"},
               {"instruction": "And 3+3?", "output": "6", "history": history},
               {"instruction": "Bye", "output": "Bye.", "history": None},  # null and "" are no history
               {"instruction": "Yo", "output": "Yo.", "history": ""}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert_one_error(invoke("--db", db_url, "ingest", path, "--dataset", "h"),
                     f"{path}, record 2 (line 2): field 'history' is not a list of [user, assistant] text pairs "
                     f"(got {got})", "--skip-invalid")
    assert "h" not in cli("datasets").output  # nothing was ingested
    result = invoke("--db", db_url, "ingest", path, "--dataset", "h", "--skip-invalid")
    assert result.exit_code == 0, result.output
    assert "h: read 4, new 3, duplicates 0, invalid 1" in result.output
    assert "record 2 (line 2): field 'history'" in result.output
