"""Generated hostile inputs against ingest, prompts import, model add and every fusion option.

For each input the same four things must hold: exit code 1, exactly one `Error: …` line, no
traceback, and the store unchanged (every row of every table; on SQLite the bytes of the file too).
Each test runs a whole family of inputs and lists every one that broke a rule, on SQLite and on
PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
from guards import invoke, merge_wal, snapshot, sqlite_path
from test_views import seed

from selectit.store import db

GOOD = {"instruction": "Say hi.", "input": "", "output": "Hi."}


def _violations(db_url: str, cases: list[tuple[str, list[object]]], created: list[Path] = ()) -> list[str]:
    """Run each (label, args) case; return a line per broken rule."""
    problems = []
    store_file = sqlite_path(db_url)
    for label, args in cases:
        before = snapshot(db_url)
        digest = hashlib.sha256(store_file.read_bytes()).hexdigest() if store_file else None
        result = invoke("--db", db_url, *args)
        lines = [line for line in result.output.splitlines() if line.strip()]
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            problems.append(f"{label}: traceback {type(result.exception).__name__}: {result.exception}")
        elif result.exit_code != 1:
            problems.append(f"{label}: exit {result.exit_code}: {result.output[:300]!r}")
        elif len(lines) != 1 or not lines[0].startswith("Error: "):
            problems.append(f"{label}: not one Error line: {result.output[:300]!r}")
        if snapshot(db_url) != before:
            problems.append(f"{label}: the store changed")
        if store_file and hashlib.sha256(store_file.read_bytes()).hexdigest() != digest:
            problems.append(f"{label}: the SQLite file's bytes changed")
        for path in created:
            if path.exists():
                problems.append(f"{label}: {path.name} was written")
    return problems


@pytest.fixture
def seeded(engine, db_url: str) -> str:
    seed(engine)
    merge_wal(engine)
    return db_url


# ------------------------------------------------------------------------------ generated files
def hostile_files() -> dict[str, bytes]:
    """File name → bytes: nesting, encodings, huge fields, control characters, odd numbers."""
    rng = random.Random(11)
    good = json.dumps(GOOD).encode()
    files: dict[str, bytes] = {}
    for depth in (1_000, 100_000):
        files[f"deep-list-{depth}.json"] = b"[" + good + b"," + b"[" * depth + b"]" * depth + b"]"
        files[f"deep-line-{depth}.jsonl"] = good + b"\n" + b"{\"a\":" * depth + b"1" + b"}" * depth + b"\n"
        files[f"deep-field-{depth}.jsonl"] = b'{"instruction": ' + b"[" * depth + b"]" * depth + b', "output": "o"}\n'
    text = json.dumps([GOOD])
    for enc in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "cp1252", "latin-1"):
        files[f"enc-{enc}.json"] = text.replace("Hi.", "Hé ✓.").encode(enc, errors="replace")
    files["bom-only.json"] = b"\xef\xbb\xbf"
    files["whitespace.json"] = b" \n\t\r\n"
    files["nul-bytes.jsonl"] = good + b"\n\x00\x00\x00\n"
    files["nul-escape.jsonl"] = json.dumps({"instruction": "a\u0000b", "output": "o"}).encode() + b"\n"
    files["lone-surrogate.jsonl"] = b'{"instruction": "\\ud800", "output": "o"}\n'
    files["raw-control.jsonl"] = b'{"instruction": "a\x01\x1b[31mb", "output": "o\x07"}\n'
    files["newline-in-string.jsonl"] = b'{"instruction": "a\nb", "output": "o"}\n'
    files["huge-int-field.jsonl"] = b'{"instruction": ' + b"9" * 5000 + b', "output": "o"}\n'
    files["huge-int-id.jsonl"] = b'{"instruction": "i", "output": "o", "id": ' + b"9" * 5000 + b"}\n"
    files["huge-id.jsonl"] = json.dumps({**GOOD, "id": "x" * 100_000}).encode() + b"\n"
    files["huge-float.jsonl"] = b'{"instruction": 1e999999, "output": "o"}\n'
    files["nan-field.jsonl"] = b'{"instruction": NaN, "output": "o"}\n'
    files["nan-id.jsonl"] = b'{"instruction": "i", "output": "o", "id": NaN}\n'
    files["infinity-id.jsonl"] = b'{"instruction": "i", "output": "o", "id": -Infinity}\n'
    files["list-id.jsonl"] = b'{"instruction": "i", "output": "o", "id": [1, [2]]}\n'
    files["object-id.jsonl"] = b'{"instruction": "i", "output": "o", "id": {"a": 1}}\n'
    files["bool-id.jsonl"] = b'{"instruction": "i", "output": "o", "id": false}\n'
    files["empty-list.json"] = b"[]"
    files["empty-object.jsonl"] = b"{}\n"
    files["scalar-null.json"] = b"null"
    files["list-of-nulls.json"] = b"[null, null]"
    files["list-of-lists.json"] = b'[["instruction", "output"]]'
    files["truncated.json"] = b"[" + good + b", {\"instruction\": \"x\", \"out"
    files["truncated-line.jsonl"] = good + b'\n{"instruction": "a", "output": "b"\n'
    files["duplicate-keys-bad.jsonl"] = b'{"instruction": "i", "output": "o", "output": null}\n'
    files["sharegpt-no-assistant.jsonl"] = json.dumps({"conversations": [{"from": "human", "value": "hi"}]}).encode()
    files["sharegpt-bad-turn.jsonl"] = json.dumps({"conversations": [{"from": "human", "value": ["x"]},
                                                                     {"from": "gpt", "value": "y"}]}).encode()
    files["messages-bad-role.jsonl"] = json.dumps({"messages": [{"role": "wizard", "content": "x"},
                                                                {"role": "assistant", "content": "y"}]}).encode()
    files["parquet-magic-junk.parquet"] = b"PAR1" + bytes(rng.randrange(256) for _ in range(500)) + b"PAR1"
    files["text-named.parquet"] = good
    files["random-bytes.json"] = bytes(rng.randrange(256) for _ in range(2000))
    files["csv.json"] = b"instruction,output\nhi,there\n"
    files.update(corrupt_columnar_files())
    return files


def corrupt_columnar_files() -> dict[str, bytes]:
    """Real Parquet and Arrow files of 3,000 records, broken in their middle: a Parquet data page
    overwritten, an Arrow file's record batch body overwritten, an Arrow stream cut short."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist([{"instruction": f"Say {i} " + "x" * 40, "input": "", "output": f"Out {i} " + "y" * 40}
                                  for i in range(3000)])
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=1000, compression="NONE")
    parquet = bytearray(sink.getvalue())
    page = pq.ParquetFile(io.BytesIO(bytes(parquet))).metadata.row_group(1).column(0).data_page_offset
    parquet[page + 10:page + 400] = b"\xab" * 390
    files = {"corrupt-page.parquet": bytes(parquet)}
    for name, new in (("arrow", pa.ipc.new_file), ("arrows", pa.ipc.new_stream)):
        sink = pa.BufferOutputStream()
        with new(sink, table.schema) as writer:
            writer.write_table(table, max_chunksize=1000)
        data = bytearray(sink.getvalue().to_pybytes())
        if name == "arrow":
            data[len(data) // 2:len(data) // 2 + 3000] = b"\xff" * 3000
            files["corrupt-body.arrow"] = bytes(data)
        else:
            files["truncated-stream.arrows"] = bytes(data[:len(data) * 2 // 3])
    return files


def test_hostile_files_on_ingest(seeded: str, tmp_path: Path) -> None:
    cases = []
    for name, content in hostile_files().items():
        path = tmp_path / name
        path.write_bytes(content)
        cases.append((name, ["ingest", path, "--dataset", "hostile"]))
    for fmt in ("alpaca-json", "jsonl", "sharegpt", "messages", "parquet"):
        cases.append((f"random bytes as {fmt}", ["ingest", tmp_path / "random-bytes.json", "--dataset", "hostile",
                                                "--format", fmt]))
    problems = _violations(seeded, cases)
    assert not problems, "\n".join(problems)


HOSTILE_NAMES = ["", " ", "\t", "two\nlines", "cr\rname", "nul\x00name", "esc\x1b[2Jname", "bell\x07",
                 "line\u2028sep", "x" * 201, "c1\x9bname", "osc\x1b]0;title\x07",
                 "caf\udce9", "\udcff\udcfe"]  # the last two: non-UTF-8 bytes in argv (as Python decodes them)


def test_hostile_names(seeded: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "a.json"
    data.write_text(json.dumps([GOOD]))
    prompts = tmp_path / "p.txt"
    prompts.write_text("Rate it.\n")
    cases = []
    for name in HOSTILE_NAMES:
        cases += [
            (f"dataset {name!r}", ["ingest", data, "--dataset", name]),
            (f"prompt set {name!r}", ["prompts", "import", prompts, "--set", name, "--layout", "reference"]),
            (f"model {name!r}", ["model", "add", name, "--source", tiny_model_dir, "--dtype", "float32"]),
            (f"selection {name!r}", ["select", name, "--dataset", "d", "--prompt-set", "s"]),
        ]
    problems = _violations(seeded, cases)
    assert not problems, "\n".join(problems)


def test_hostile_prompt_files_and_options(seeded: str, tmp_path: Path) -> None:
    files = {
        "utf16.txt": "Rate it.\n".encode("utf-16"),
        "latin1.txt": "Évaluez.\n".encode("latin-1"),
        "empty.txt": b"",
        "blank-line.txt": b"Rate it.\n\nAgain.\n",
        "nul.txt": b"Rate\x00 it.\n",
        "binary.txt": bytes(range(256)),
        "sc-no-output.txt": b"{instruction}\\nRating: \n",
        "sc-no-instruction.txt": b"{output}\\nRating: \n",
        "sc-two-outputs.txt": b"{instruction}\\n{output}{output}\\nRating: \n",
        "sc-no-colon.txt": b"{instruction}\\n{output}\\nRating\n",
        "sc-input-with-instruction.txt": b"{instruction} {input}\\n{output}\\nRating: \n",
        "sc-input-last.txt": b"{instruction}\\n{output}\\n{input}Rating: \n",
    }
    cases = []
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        layout = "shared-context" if name.startswith("sc-") else "reference"
        cases.append((name, ["prompts", "import", path, "--set", "p", "--layout", layout]))
    ok = tmp_path / "ok.txt"
    ok.write_text("Rate it.\nAgain.\n")
    for option, value in [("--scale", "0"), ("--scale", "1"), ("--scale", "10"), ("--scale", "-3"),
                          ("--first", "0"), ("--first", "-1"), ("--first", "99")]:
        cases.append((f"{option} {value}", ["prompts", "import", ok, "--set", "p", "--layout", "reference",
                                            f"{option}={value}"]))
    cases.append(("no such file", ["prompts", "import", tmp_path / "missing.txt", "--set", "p", "--layout",
                                   "reference"]))
    problems = _violations(seeded, cases)
    assert not problems, "\n".join(problems)


def test_hostile_model_sources_and_numbers(seeded: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(64))
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    random_gguf = tmp_path / "random.gguf"
    random_gguf.write_bytes(bytes(random.Random(5).randrange(256) for _ in range(4096)))
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    broken = tmp_path / "broken-config"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "config.json").write_text('{"model_type": "no-such-architecture"}')
    deep = tmp_path / "deep-config"
    deep.mkdir()
    for f in tiny_model_dir.iterdir():
        (deep / f.name).write_bytes(f.read_bytes())
    (deep / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    cases = [(f"source {p.name}", ["model", "add", "m", "--source", p]) for p in (junk, empty, random_gguf, no_config,
                                                                                  broken, deep)]
    cases.append(("source ''", ["model", "add", "m", "--source", ""]))
    cases.append(("source missing", ["model", "add", "m", "--source", tmp_path / "missing.gguf"]))
    for option, value in [("--weight", "nan"), ("--weight", "inf"), ("--weight", "-inf"), ("--weight", "1e309"),
                          ("--weight", "0"), ("--weight", "-1"), ("--max-tokens", "0"), ("--max-tokens", "-5")]:
        cases.append((f"{option} {value}", ["model", "add", "m", "--source", tiny_model_dir, "--dtype", "float32",
                                            f"{option}={value}"]))
    problems = _violations(seeded, cases)
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- fusion options
FUSION_VALUES = [
    ("--alpha", v) for v in ("nan", "inf", "-inf", "1e309", "-1", "-0.5")
] + [
    ("--top", v) for v in ("nan", "inf", "-inf", "0", "-0.2", "1.5", "1e309")
] + [
    ("--min-score", v) for v in ("nan", "inf", "-inf", "1e309", "-1e309")
] + [
    ("--weights", v) for v in ("A=nan", "A=inf", "A=-inf", "A=1e309", "A=0", "A=-1", "Z=1", "A=1,B=nan")
] + [
    ("--models", v) for v in ("nosuch", "A,nosuch", "A\nB", "'; DROP TABLE scores; --")
] + [
    ("--prompt-set", v) for v in ("nosuch", "s\n", "s'--", "\x00")
]


@pytest.mark.parametrize("command", ["rank", "select", "export", "sql", "report"])
def test_hostile_fusion_options(seeded: str, tmp_path: Path, command: str) -> None:
    out = tmp_path / "out.json"
    report = tmp_path / "report"
    base = {
        "rank": ["rank", "--dataset", "d"],
        "select": ["select", "v1", "--dataset", "d"],
        "export": ["export", "--dataset", "d", "--out", out],
        "sql": ["sql", "SELECT count(*) FROM ranking"],
        "report": ["report", "--dataset", "d", "--out", report],
    }[command]
    cases = []
    for option, value in FUSION_VALUES:
        if command in ("sql", "report") and option == "--min-score":
            continue
        args = [*base, f"{option}={value}"]
        if option != "--prompt-set":
            args.append("--prompt-set=s")
        cases.append((f"{command} {option}={value!r}", args))
    if command != "sql":
        for dataset in ("nosuch", "d\n", "", "d'; --"):
            args = [a if a != "d" else dataset for a in base] + ["--prompt-set=s"]
            cases.append((f"{command} --dataset {dataset!r}", args))
    problems = _violations(seeded, cases, created=[out, report])
    assert not problems, "\n".join(problems)


def test_hostile_sql_statements(seeded: str, tmp_path: Path) -> None:
    statements = ["", ";", "   ", "SELEC 1", "SELECT * FROM store.no_such_table", "SELECT 1/0::INTEGER + 'x'",
                  "SELECT " + "(" * 10_000 + "1" + ")" * 10_000, "DROP TABLE store.samples", "BEGIN; COMMIT",
                  "SET threads = 1", "PRAGMA threads = 1", "INSTALL httpfs", "LOAD httpfs", "DETACH store",
                  f"ATTACH '{tmp_path / 'x.duckdb'}' AS x", "USE memory", "CHECKPOINT", "VACUUM",
                  "CALL pragma_version()", "PREPARE p AS SELECT 1", f"EXPORT DATABASE '{tmp_path / 'exported'}'",
                  f"COPY (SELECT 1) TO '{tmp_path / 'x.csv'}'", "SELECT * FROM read_json('/etc/hostname')",
                  "SELECT * FROM query('SELECT 1')", "SELECT getenv('HOME')"]
    cases = [(f"sql {s[:40]!r}", ["sql", s, "--prompt-set", "s"]) for s in statements]
    problems = _violations(seeded, cases, created=[tmp_path / "x.duckdb", tmp_path / "x.csv", tmp_path / "exported"])
    assert not problems, "\n".join(problems)


def test_store_unchanged_by_a_refused_command_is_checked(seeded: str) -> None:
    """The harness itself: a successful command that writes is reported."""
    problems = _violations(seeded, [("a valid selection", ["select", "ok", "--dataset", "d", "--prompt-set", "s"])])
    assert any("exit 0" in p for p in problems) and any("store changed" in p for p in problems)
    assert db.resolve_url(seeded)  # the URL stays usable


def test_non_regular_and_non_utf8_files_on_ingest(seeded: str, tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(GOOD) + "\n")
    odd = tmp_path / os.fsdecode(b"caf\xe9.jsonl")
    odd.write_text(json.dumps(GOOD) + "\n")
    cases = [(f"{path} as {fmt}", ["ingest", path, "--dataset", "hostile", *(["--format", fmt] if fmt else [])])
             for path in ("/dev/zero", "/dev/null", fifo) for fmt in (None, "jsonl", "csv", "parquet")]
    cases += [("non-UTF-8 file name", ["ingest", odd, "--dataset", "hostile"]),
              ("non-UTF-8 --out", ["export", "--dataset", "d", "--prompt-set", "s", "--out",
                                   tmp_path / os.fsdecode(b"out\xff.json")]),
              ("non-UTF-8 SQL", ["sql", os.fsdecode(b"SELECT '\xff'")])]
    problems = _violations(seeded, cases, created=[tmp_path / os.fsdecode(b"out\xff.json")])
    assert not problems, "\n".join(problems)


#: Names and texts that are valid but look like rich markup, emoji codes or terminal controls.
MARKUP_NAMES = ["x[/y]", "[bold]b[/bold]", "[/INST]", ":thumbs_up:", "a[link=http://x]b", "\\[x]"]
MARKUP_TEXT = "[INST] <<SYS>> [/INST] [bold]kept[/bold] [/] :smile: \x1b]0;title\x07 \x1b[2J \x9b1m"


def test_markup_and_controls_in_every_name_and_text_field_print_verbatim(seeded: str, tmp_path: Path,
                                                                          tiny_model_dir: Path) -> None:
    record = {"instruction": MARKUP_TEXT, "input": MARKUP_TEXT + " in", "output": MARKUP_TEXT + " out",
              "system": MARKUP_TEXT + " sys"}
    prompts = tmp_path / "p.txt"
    prompts.write_text("Rate [/x] :smile: {instruction} {output}: \n")
    problems = []
    for i, name in enumerate(MARKUP_NAMES):
        data = tmp_path / f"{i}[b]d:smile:.jsonl"
        data.write_text(json.dumps({**record, "output": f"{record['output']} {i}"}) + "\n")
        steps = [["ingest", data, "--dataset", name],
                 ["prompts", "import", prompts, "--set", name, "--layout", "shared-context"],
                 ["model", "add", name, "--source", tiny_model_dir, "--dtype", "float32"],
                 ["select", name, "--dataset", "d", "--prompt-set", "s", "--models", "A,B"]]
        for args in steps:
            result = invoke("--db", seeded, *args)
            if result.exit_code != 0 or result.exception is not None and not isinstance(result.exception, SystemExit):
                problems.append(f"{args[0]} {name!r}: exit {result.exit_code}: {result.output[:300]!r}")
    for args in (["status"], ["datasets"], ["models"], ["prompts"], ["rank", "--dataset", "d", "--prompt-set", "s"],
                 ["sql", "SELECT instruction, input, output FROM store.samples"],
                 ["sql", "SELECT name FROM store.selections", "--format", "json"]):
        result = invoke("--db", seeded, *args)
        if result.exit_code != 0:
            problems.append(f"{args[0]}: exit {result.exit_code}: {result.output[:300]!r}")
        elif args[0] in ("datasets", "models", "prompts") and not all(n in result.output for n in MARKUP_NAMES):
            problems.append(f"{args[0]}: a name was changed on output: {result.output[:600]!r}")
    csv_out = invoke("--db", seeded, "sql", "SELECT instruction FROM store.samples WHERE instruction LIKE '%[/INST]%' "
                                            "LIMIT 1", "--format", "csv").output
    if MARKUP_TEXT not in csv_out:  # a pipe gets the exact text, controls included
        problems.append(f"sql csv changed the text: {csv_out!r}")
    assert not problems, "\n".join(problems)
