"""Ingest: formats, canonical hashing, dedup, positions, bad input (exact messages), --skip-invalid.

Every test that touches the store runs on a real SQLite file and on a real PostgreSQL database.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from selectit.io import ingest as ingest_mod
from selectit.io.ingest import canonical, content_hash, render_conversation
from selectit.store import db

DEMO = Path(__file__).resolve().parents[2] / "selectit" / "data" / "alpaca_en_demo.json"
SKIP = "Nothing was ingested; fix the record, or try --skip-invalid to ingest only the valid records."


def rec(i: int, **extra: str) -> dict[str, str]:
    return {"instruction": f"Task {i}", "input": "", "output": f"Answer {i}", **extra}


def write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_json(path: Path, records: list[object]) -> Path:
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def query(db_url: str, sql: str) -> list[tuple]:
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(sql)).all()]
    engine.dispose()
    return rows


def counts(db_url: str) -> tuple[int, int, int]:
    """(datasets, samples, memberships)."""
    return query(db_url, "SELECT (SELECT COUNT(*) FROM datasets), (SELECT COUNT(*) FROM samples), "
                         "(SELECT COUNT(*) FROM dataset_samples)")[0]


def members(db_url: str, dataset: str) -> list[tuple]:
    """(position, instruction, input, output, original_id) of a dataset, by position."""
    return query(db_url, "SELECT m.position, s.instruction, s.input, s.output, m.original_id "
                         "FROM dataset_samples m JOIN samples s ON s.id = m.sample_id "
                         f"JOIN datasets d ON d.id = m.dataset_id WHERE d.name = '{dataset}' ORDER BY m.position")


# ---------------------------------------------------------------------------------- demo and dedup


def test_demo_ingest_then_again_adds_nothing(cli, db_url: str) -> None:
    # The demo file holds 999 records, 14 of them exact repeats of earlier ones (985 distinct
    # contents, counted independently below), so the first ingest stores 985.
    records = json.loads(DEMO.read_text(encoding="utf-8"))
    distinct = {(r["instruction"], r.get("input", ""), r["output"]) for r in records}
    assert (len(records), len(distinct)) == (999, 985)

    first = cli("ingest", DEMO, "--dataset", "alpaca-demo")
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == "alpaca-demo: read 999, new 985, duplicates 14, invalid 0"
    again = cli("ingest", DEMO, "--dataset", "alpaca-demo")
    assert again.stdout.strip() == "alpaca-demo: read 999, new 0, duplicates 999, invalid 0"
    assert counts(db_url) == (1, 985, 985)


def test_limit_reads_only_the_first_records_and_reuses_stored_samples(cli, db_url: str) -> None:
    assert cli("ingest", DEMO, "--dataset", "alpaca-demo").exit_code == 0
    first_ten = cli("ingest", DEMO, "--dataset", "first-ten", "--limit", "10")
    assert first_ten.stdout.strip() == ("first-ten: read 10, new 10, duplicates 0, invalid 0"
        "; of the 10 new in this dataset, already stored for another dataset (and scored once): 10, new samples: 0")
    # Ten memberships, but no new sample rows: they are the demo's first ten records.
    assert counts(db_url) == (2, 985, 995)
    records = json.loads(DEMO.read_text(encoding="utf-8"))[:10]
    assert [row[1] for row in members(db_url, "first-ten")] == [r["instruction"] for r in records]


def test_two_datasets_sharing_records_reuse_the_sample_rows(cli, db_url: str, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [rec(i) for i in range(6)])
    b = write_jsonl(tmp_path / "b.jsonl", [rec(i) for i in range(4, 10)])
    assert cli("ingest", a, "--dataset", "a").stdout.strip() == "a: read 6, new 6, duplicates 0, invalid 0"
    assert cli("ingest", b, "--dataset", "b").stdout.strip() == ("b: read 6, new 6, duplicates 0, invalid 0"
                                                                       "; of the 6 new in this dataset, already stored for another dataset (and scored once): 2, new samples: 4")
    assert counts(db_url) == (2, 10, 12)
    shared = query(db_url, "SELECT COUNT(*) FROM (SELECT sample_id FROM dataset_samples GROUP BY sample_id "
                           "HAVING COUNT(*) = 2) x")
    assert shared == [(2,)]  # records 4 and 5: one row each, member of both datasets


def test_positions_are_first_occurrences_and_continue_across_files(cli, db_url: str, tmp_path: Path) -> None:
    f1 = write_jsonl(tmp_path / "one.jsonl", [rec(0), rec(1), rec(0), rec(2)])
    f2 = write_jsonl(tmp_path / "two.jsonl", [rec(2), rec(3)])
    assert cli("ingest", f1, "--dataset", "d").stdout.strip() == "d: read 4, new 3, duplicates 1, invalid 0"
    # Next free position is 4 (max 3 + 1); rec(3) is record 2 of the second file → position 5.
    assert cli("ingest", f2, "--dataset", "d").stdout.strip() == "d: read 2, new 1, duplicates 1, invalid 0"
    assert [(p, i) for p, i, *_ in members(db_url, "d")] == [(0, "Task 0"), (1, "Task 1"), (3, "Task 2"),
                                                              (5, "Task 3")]


def test_original_id_is_kept(cli, db_url: str, tmp_path: Path) -> None:
    path = write_json(tmp_path / "ids.json", [rec(0, id="a-17"), {**rec(1), "id": 42}, rec(2)])
    assert cli("ingest", path, "--dataset", "d").exit_code == 0
    assert [m[4] for m in members(db_url, "d")] == ["a-17", "42", None]


# ---------------------------------------------------------------------------------- hashing


def test_hash_is_stable_across_line_endings_and_unicode_forms(cli, db_url: str, tmp_path: Path) -> None:
    nfc = "Café crème"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfc != nfd
    assert content_hash(nfc, "a\r\nb", "x\r\ny") == content_hash(nfd, "a\nb", "x\ny")
    assert content_hash("ab", "", "c") != content_hash("a", "b", "c")  # the separator is unambiguous
    # sha256 of b"2:ab0:1:c", worked by hand from the documented layout.
    import hashlib
    assert content_hash("ab", "", "c") == hashlib.sha256(b"2:ab0:1:c").hexdigest()

    crlf = tmp_path / "crlf.json"
    crlf.write_text(json.dumps([{"instruction": nfd, "input": "line1\r\nline2", "output": "ok\r\n"}]),
                    encoding="utf-8")
    lf = write_json(tmp_path / "lf.json", [{"instruction": nfc, "input": "line1\nline2", "output": "ok\n"}])
    assert cli("ingest", crlf, "--dataset", "a").exit_code == 0
    assert cli("ingest", lf, "--dataset", "b").stdout.strip() == ("b: read 1, new 1, duplicates 0, invalid 0"
                                                                        "; of the 1 new in this dataset, already stored for another dataset (and scored once): 1, new samples: 0")
    assert counts(db_url) == (2, 1, 2)
    # The canonical form is what is stored.
    assert members(db_url, "a")[0][1:4] == (nfc, "line1\nline2", "ok\n")
    assert canonical(nfd) == nfc


# ---------------------------------------------------------------------------------- formats


def test_alpaca_json_and_jsonl_give_the_same_samples(cli, db_url: str, tmp_path: Path) -> None:
    records = [rec(0), {"instruction": "Sum", "input": "1 2", "output": "3"}, {"instruction": "No input",
                                                                               "output": "fine"}]
    j = write_json(tmp_path / "a.json", records)
    jl = write_jsonl(tmp_path / "a.jsonl", records)
    assert cli("ingest", j, "--dataset", "json").stdout.strip() == "json: read 3, new 3, duplicates 0, invalid 0"
    assert cli("ingest", jl, "--dataset", "jsonl").stdout.strip() == ("jsonl: read 3, new 3, duplicates 0, invalid 0"
        "; of the 3 new in this dataset, already stored for another dataset (and scored once): 3, new samples: 0")
    assert counts(db_url) == (2, 3, 6)
    assert members(db_url, "json")[1][1:4] == ("Sum", "1 2", "3")
    assert members(db_url, "json")[2][1:4] == ("No input", "", "fine")


SHAREGPT = [
    {"id": "c1", "conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"}]},
    {"id": "c2", "system": "Be brief.", "conversations": [
        {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"},
        {"from": "human", "value": "Name a colour."}, {"from": "gpt", "value": "Blue."}]},
]
RENDERED = [
    ("What is 2+2?", "", "4", "c1"),
    ("System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: Name a colour.", "", "Blue.", "c2"),
]


@pytest.mark.parametrize("container", ["json", "jsonl"])
def test_sharegpt(cli, db_url: str, tmp_path: Path, container: str) -> None:
    path = (write_json if container == "json" else write_jsonl)(tmp_path / f"chat.{container}", SHAREGPT)
    assert cli("ingest", path, "--dataset", "chat").stdout.strip() == "chat: read 2, new 2, duplicates 0, invalid 0"
    assert [m[1:] for m in members(db_url, "chat")] == RENDERED


def test_messages_with_format_override(cli, db_url: str, tmp_path: Path) -> None:
    records = [
        {"messages": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}], "id": "c1"},
        {"id": "c2", "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": [{"type": "text", "text": "Blue."}]}]},
    ]
    path = write_jsonl(tmp_path / "chat.txt", records)  # no telling extension: the content decides
    result = cli("ingest", path, "--dataset", "chat", "--format", "messages")
    assert result.stdout.strip() == "chat: read 2, new 2, duplicates 0, invalid 0"
    assert [m[1:] for m in members(db_url, "chat")] == RENDERED
    detected = cli("ingest", path, "--dataset", "chat2")  # detected too
    assert detected.stdout.strip() == ("chat2: read 2, new 2, duplicates 0, invalid 0"
                                        "; of the 2 new in this dataset, already stored for another dataset (and scored once): 2, new samples: 0")
    assert counts(db_url) == (2, 2, 4)  # same content as the ShareGPT rendering: the same samples


def test_parquet_alpaca_and_conversations(cli, db_url: str, tmp_path: Path) -> None:
    flat = tmp_path / "flat.parquet"
    pq.write_table(pa.table({"instruction": ["Task 0", "Sum"], "input": ["", "1 2"], "output": ["Answer 0", "3"],
                             "id": ["p0", "p1"]}), flat)
    chat = tmp_path / "chat.parquet"
    # from_pylist takes its columns from the first row: give every row the `system` key.
    pq.write_table(pa.Table.from_pylist([{"system": None, **r} for r in SHAREGPT]), chat)
    assert cli("ingest", flat, "--dataset", "flat").stdout.strip() == "flat: read 2, new 2, duplicates 0, invalid 0"
    assert cli("ingest", chat, "--dataset", "chat").stdout.strip() == "chat: read 2, new 2, duplicates 0, invalid 0"
    assert [m[1:] for m in members(db_url, "flat")] == [("Task 0", "", "Answer 0", "p0"), ("Sum", "1 2", "3", "p1")]
    assert [m[1:] for m in members(db_url, "chat")] == RENDERED


def test_single_user_turn_is_the_instruction_as_is() -> None:
    assert render_conversation([("user", "Hi"), ("assistant", "Hello")]) == ("Hi", "Hello")
    assert render_conversation([("system", "S"), ("user", "Hi"), ("assistant", "Hello"), ("user", "bye")]) == (
        "System: S\nUser: Hi", "Hello")


# ---------------------------------------------------------------------------------- bad input


def assert_failed_and_nothing_committed(result, db_url: str, message: str, before=(0, 0, 0)) -> None:
    assert result.exit_code == 1
    assert result.stderr == f"Error: {message}\n"
    assert counts(db_url) == before


def test_malformed_jsonl_line(cli, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(rec(0)) + "\n" + '{"instruction": "x" "output": "y"}\n', encoding="utf-8")
    assert_failed_and_nothing_committed(
        cli("ingest", path, "--dataset", "d"), db_url,
        f"{path}, line 2: invalid JSON (Expecting ',' delimiter, column 21). Nothing was ingested; fix the "
        f"line, or try --skip-invalid to ingest only the valid records.")


def test_malformed_json_list(cli, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  {"instruction": "c",, "output": "d"}\n]\n',
                    encoding="utf-8")
    assert_failed_and_nothing_committed(
        cli("ingest", path, "--dataset", "d", "--skip-invalid"), db_url,
        f"{path}, line 3, column 23: invalid JSON (Expecting property name enclosed in double quotes). Nothing "
        f"was ingested; fix the file (a JSON list cannot be read past a syntax error), or convert it to JSONL "
        f"and use --skip-invalid.")


@pytest.mark.parametrize("record, where, reason", [
    ({"instruction": "x"}, "record 2", "missing field 'output'"),
    ({"instruction": "  ", "output": "y"}, "record 2", "empty field 'instruction'"),
    ({"input": "x", "output": "y"}, "record 2", "missing field 'instruction'"),
    ({"instruction": "x", "output": 3}, "record 2", "field 'output' is not a string (got a number)"),
])
def test_missing_or_empty_field_in_json_list(cli, db_url: str, tmp_path: Path, record, where, reason) -> None:
    path = write_json(tmp_path / "bad.json", [rec(0), record, rec(2)])
    assert_failed_and_nothing_committed(cli("ingest", path, "--dataset", "d"), db_url,
                                        f"{path}, {where}: {reason}. {SKIP}")


def test_invalid_record_late_in_a_big_file_rolls_back_written_chunks(cli, db_url: str, tmp_path: Path,
                                                                     monkeypatch) -> None:
    ok = write_jsonl(tmp_path / "ok.jsonl", [rec(i) for i in range(3)])
    assert cli("ingest", ok, "--dataset", "d").exit_code == 0
    monkeypatch.setattr(ingest_mod, "CHUNK", 2)  # several chunks are written before the bad record
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(rec(i)) + "\n" for i in range(10)) + "\n" + json.dumps({"instruction": "x",
                    "output": ""}) + "\n", encoding="utf-8")
    assert_failed_and_nothing_committed(cli("ingest", path, "--dataset", "d"), db_url,
                                        f"{path}, record 11 (line 12): empty field 'output'. {SKIP}",
                                        before=(1, 3, 3))
    # A new dataset is not created either.
    assert_failed_and_nothing_committed(cli("ingest", path, "--dataset", "e"), db_url,
                                        f"{path}, record 11 (line 12): empty field 'output'. {SKIP}",
                                        before=(1, 3, 3))


def test_conversation_without_assistant_turn(cli, db_url: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "chat.jsonl", [SHAREGPT[0], {"conversations": [{"from": "human", "value": "hi"}]}])
    assert_failed_and_nothing_committed(
        cli("ingest", path, "--dataset", "d"), db_url,
        f"{path}, record 2 (line 2): no assistant turn (the last assistant turn is the response). {SKIP}")


def test_an_invalid_record_is_named_by_its_own_id_too(cli, db_url: str, tmp_path: Path) -> None:
    """Real ShareGPT V3 holds conversations without an assistant turn: the error names the record's
    `id` beside its position, so a user finds it in the source; an id that is itself bad is left out."""
    from sharegpt import first_records

    records = first_records(100)
    bad = next(i for i, r in enumerate(records) if not any(t.get("from") == "gpt" for t in r["conversations"]))
    path = write_jsonl(tmp_path / "sg.jsonl", records[:bad + 1])
    assert_failed_and_nothing_committed(
        cli("ingest", path, "--dataset", "d"), db_url,
        f"{path}, record {bad + 1} (id {records[bad]['id']}, line {bad + 1}): no assistant turn (the last assistant "
        f"turn is the response). {SKIP}")
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"id": ["not", "an id"], **{k: v for k, v in SHAREGPT[0].items() if k != "id"}}])
    assert_failed_and_nothing_committed(
        cli("ingest", odd, "--dataset", "d"), db_url,
        f"{odd}, record 1 (line 1): field 'id' must be a string or a number (got an array). {SKIP}")


def test_non_utf8(cli, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(rec(0)).encode() + b"\n" + '{"instruction": "Caf\u00e9", "output": "x"}\n'.encode("latin-1"))
    offset = len(json.dumps(rec(0))) + 1 + len('{"instruction": "Caf')
    assert_failed_and_nothing_committed(
        cli("ingest", path, "--dataset", "d", "--skip-invalid"), db_url,
        f"{path}: not valid UTF-8 at byte {offset} (line 2, byte 0xe9). Nothing was ingested; re-encode the "
        f"file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 latin1.jsonl > fixed.json`) and ingest that.")
    as_list = tmp_path / "latin1.json"
    as_list.write_bytes(b'[{"instruction": "Caf\xe9", "output": "x"}]')
    assert_failed_and_nothing_committed(
        cli("ingest", as_list, "--dataset", "d"), db_url,
        f"{as_list}: not valid UTF-8 at byte 21 (line 1, byte 0xe9). Nothing was ingested; re-encode the "
        f"file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 latin1.json > fixed.json`) and ingest that.")


def test_unknown_format(cli, db_url: str, tmp_path: Path) -> None:
    text = tmp_path / "data.txt"
    text.write_text("instruction: a\noutput: b\n", encoding="utf-8")
    tail = ("Nothing was ingested; selectit reads alpaca-json, jsonl, sharegpt, messages, parquet, csv, tsv, arrow, "
            "hf-dir (see `selectit ingest --help`); convert the file, or pass --format if detection got it wrong.")
    assert_failed_and_nothing_committed(
        cli("ingest", text, "--dataset", "d"), db_url,
        f"{text}: unknown format (not JSON, JSONL, Parquet, CSV or Arrow; it starts with b'instruction: a\\noutpu'). "
        f"{tail}")
    other = write_jsonl(tmp_path / "other.jsonl", [{"question": "q", "answer": "a"}])
    assert_failed_and_nothing_committed(
        cli("ingest", other, "--dataset", "d"), db_url,
        f"{other}: unknown format (the first record has fields ['answer', 'question']; expected "
        f"instruction/input/output, conversations, messages or prompt/completion, or map them: --map instruction=question,"
        f"output=answer). {tail}")
    assert_failed_and_nothing_committed(
        cli("ingest", other, "--dataset", "d", "--format", "xml"), db_url,
        "unknown format 'xml'; choose one of alpaca-json, jsonl, sharegpt, messages, parquet, csv, tsv, arrow, "
        "hf-dir (or leave --format out to detect it).")


# ---------------------------------------------------------------------------------- --skip-invalid


def test_skip_invalid_commits_the_valid_records_and_lists_the_rest(cli, db_url: str, tmp_path: Path) -> None:
    lines = [json.dumps(rec(0)), "{not json", json.dumps({"instruction": "x"}), json.dumps(rec(1))]
    lines += [json.dumps({"instruction": f"only {i}"}) for i in range(22)]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = cli("ingest", path, "--dataset", "d", "--skip-invalid")
    assert result.exit_code == 0
    assert result.stdout == "d: read 26, new 2, duplicates 0, invalid 24\n"
    err = result.stderr.splitlines()
    assert err[:3] == [
        "skipped 24 invalid records:",
        "  record 2 (line 2): invalid JSON (Expecting property name enclosed in double quotes, column 2)",
        "  record 3 (line 3): missing field 'output'",
    ]
    assert err[20] == "  record 22 (line 22): missing field 'output'"  # the 20th listed
    assert err[21:] == ["  … and 4 more invalid records"]
    assert [m[1] for m in members(db_url, "d")] == ["Task 0", "Task 1"]
    assert [m[0] for m in members(db_url, "d")] == [0, 3]


def test_text_no_backend_can_store_is_an_invalid_record(cli, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "odd.jsonl"  # JSON escapes: a NUL in the output, a lone surrogate in the instruction
    path.write_text(json.dumps(rec(0)) + "\n" + '{"instruction": "a", "output": "b\\u0000c"}\n'
                    + '{"instruction": "x\\ud800", "output": "y"}\n', encoding="utf-8")
    result = cli("ingest", path, "--dataset", "d", "--skip-invalid")
    assert result.stdout == "d: read 3, new 1, duplicates 0, invalid 2\n"
    assert result.stderr.splitlines() == [
        "skipped 2 invalid records:",
        "  record 2 (line 2): field 'output' contains a NUL character",
        "  record 3 (line 3): text contains an unpaired surrogate ('\\ud800')",
    ]
    assert counts(db_url) == (1, 1, 1)


# ---------------------------------------------------------------------------------- listing


def test_datasets_and_status(cli, db_url: str, tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [rec(i) for i in range(3)])
    b = write_jsonl(tmp_path / "b.jsonl", [rec(i) for i in range(2, 7)])
    cli("ingest", a, "--dataset", "alpha")
    cli("ingest", b, "--dataset", "beta")
    listing = cli("datasets")
    assert listing.exit_code == 0
    rows = [line for line in listing.stdout.splitlines() if "alpha" in line or "beta" in line]
    assert len(rows) == 2
    assert rows[0].split("│")[1:3] == [" alpha   ", "       3 "]
    assert rows[1].split("│")[1:3] == [" beta    ", "       5 "]
    status = cli("status")
    assert status.exit_code == 0
    assert "distinct samples stored: 7" in status.stdout
    from selectit.io.ingest import dataset_rows, sample_counts
    engine = db.open_store(db_url)
    assert sample_counts(engine) == ([("alpha", 3), ("beta", 5)], 7)
    assert [(n, c, s) for n, c, _, s in dataset_rows(engine)] == [("alpha", 3, str(a)), ("beta", 5, str(b))]
    engine.dispose()


def test_the_parse_step_reads_records_without_a_database(tmp_path: Path) -> None:
    """formats.RecordReader: canonical records and invalid ones, the format refined by the first record."""
    from selectit.io.readers import InvalidRecord, Record, RecordReader, read_records

    path = tmp_path / "chats.jsonl"
    path.write_text(
        json.dumps({"id": 7, "conversations": [{"from": "human", "value": "Hi\r\n"}, {"from": "gpt", "value": "Hello"}]})
        + "\n{not json\n"
        + json.dumps({"conversations": [{"from": "human", "value": "Only a question"}]}) + "\n",
        encoding="utf-8",
    )
    reader = RecordReader(path)
    assert reader.format == "jsonl"  # from the first byte; the first record refines it
    items = list(reader)
    assert reader.format == "sharegpt" and reader.read == 3
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert items[0] == Record(1, 1, "Hi\n", "", "Hello", "7", first_line)  # the line kept as it was
    assert items[1] == InvalidRecord(2, 2, "invalid JSON (Expecting property name enclosed in double quotes, column 2)")
    assert items[1].unparsed and not items[2].unparsed
    assert items[2].reason == "no assistant turn (the last assistant turn is the response)"
    assert read_records(path, limit=1) == items[:1]


def test_the_summary_tells_new_in_this_dataset_from_new_samples(cli, tmp_path) -> None:
    """A record already stored for another dataset is new in this one, but no new sample (nothing to score)."""
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    one.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]))
    two.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "e", "output": "f"}]))
    assert cli("ingest", one, "--dataset", "one").stdout == "one: read 2, new 2, duplicates 0, invalid 0\n"
    assert cli("ingest", two, "--dataset", "two").stdout == (
        "two: read 2, new 2, duplicates 0, invalid 0; of the 2 new in this dataset, already stored for another "
        "dataset (and scored once): 1, new samples: 1\n")
