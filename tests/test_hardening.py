"""Issue 11, item by item: a console that cannot write, exports that cannot destroy, no traceback.

Each numbered item of the issue has a test here (the number is in the test's name); they run on
SQLite and on PostgreSQL wherever the store matters (the `db_url`/`engine`/`cli` fixtures), through
the CLI. Scores are seeded directly (`test_fusion.seed`: dataset `d`, models A/B, prompt set `s`).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import unicodedata
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_fusion import seed

from selectit import db, fusion
from selectit.cli import main

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------- helpers
def invoke(*args: object, env: dict[str, str] | None = None) -> object:
    """Run the CLI catching everything, so a traceback is a failed assertion, not a crash."""
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def assert_one_error(result, *phrases: str) -> str:
    """Exit 1, one `Error: …` line and nothing else, no traceback; the line holds each phrase."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"traceback: {result.exception!r}\n{result.output}")
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def snapshot(db_url: str) -> dict[str, list[tuple]]:
    """Every row of every table, to show that a refused command changed nothing."""
    engine = db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            tables = sorted(sa.inspect(conn).get_table_names())
            return {t: sorted(map(tuple, conn.execute(sa.text(f'SELECT * FROM "{t}"')).all()), key=repr)
                    for t in tables}
    finally:
        engine.dispose()


def sqlite_path(db_url: str) -> Path | None:
    url = sa.make_url(db_url)
    return Path(url.database) if url.get_backend_name() == "sqlite" else None


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def seeded(engine, db_url: str) -> str:
    """The database URL of a store with a scored dataset `d` (prompt set `s`)."""
    seed(engine)
    return db_url


def sql(db_url: str, statement: str, *extra: str):
    return invoke("--db", db_url, "sql", statement, "--prompt-set", "s", *extra)


# ------------------------------------------------------------------ 1. the console writes no file
def _writes(target: Path, outdir: Path) -> list[str]:
    return [
        f"COPY (SELECT 'x' AS x) TO '{target}' (FORMAT csv)",
        f"COPY (SELECT 'x' AS x) TO '{target}' (FORMAT csv, USE_TMP_FILE false)",
        f"COPY (SELECT 'x' AS x) TO '{outdir / 'a.parquet'}' (FORMAT parquet)",
        f"COPY (SELECT 'x' AS x) TO '{outdir / 'a.json'}' (FORMAT json)",
        f"COPY (SELECT 1 AS a, 2 AS b) TO '{outdir / 'part'}' (FORMAT csv, PARTITION_BY (a))",
        f"EXPORT DATABASE '{outdir / 'exported'}'",
        f"SELECT 1; COPY (SELECT 1) TO '{outdir / 'b.csv'}'",
    ]


def test_1_console_cannot_write_any_file(seeded: str, tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    store_file = sqlite_path(seeded)
    target = store_file or outdir / "store.csv"
    digest = file_digest(store_file) if store_file else None
    before = snapshot(seeded)
    for statement in _writes(target, outdir):
        assert_one_error(sql(seeded, statement))
        assert list(outdir.iterdir()) == [], statement
        if store_file:
            assert file_digest(store_file) == digest, statement
    assert snapshot(seeded) == before


@pytest.mark.parametrize("call", [
    "CALL enable_logging(storage='file', storage_path='{out}')",
    "CALL enable_logging(storage='file', storage_path='/nonexistent/dir/for/logs')",
    "SELECT * FROM enable_logging(storage='file', storage_path='{out}')",
])
def test_1_console_refuses_logging_to_files(seeded: str, tmp_path: Path, call: str) -> None:
    # A subprocess: before the fix DuckDB could abort the whole process (rc 134).
    out = tmp_path / "logs"
    proc = subprocess.run([sys.executable, "-m", "selectit", "--db", seeded, "sql", call.format(out=out),
                           "--prompt-set", "s"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


# ------------------------------------------------------------------ 2. the console reads no file
def test_2_console_cannot_read_other_files(seeded: str, tmp_path: Path) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\n1,TOPSECRET\n")
    other = tmp_path / "other.sqlite"
    import sqlite3

    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (s TEXT)")
        conn.execute("INSERT INTO t VALUES ('TOPSECRET')")
    conn.close()
    for statement in [
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM read_text('{secret}')",
        f"SELECT * FROM read_blob('{secret}')",
        f"SELECT * FROM '{secret}'",
        f"SELECT * FROM glob('{tmp_path}/*')",
        "SELECT * FROM glob('/root/.*')",
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM sqlite_scan('{other}', 't')",
        f"CALL sqlite_attach('{other}')",
        f"SELECT * FROM sqlite_attach('{other}')",
        f"SELECT * FROM sqlite_query('{other}', 'SELECT * FROM t')",
    ]:
        result = sql(seeded, statement)
        assert_one_error(result)
        assert "TOPSECRET" not in result.output and "secret.csv" not in result.output.split(":", 1)[0]
        assert "root:" not in result.output


# ----------------------------------------------------- 3. no raw SQL reaches the PostgreSQL server
RAW = [
    "SELECT * FROM query('SELECT * FROM postgres_' || 'execute(''store'', ''COMMIT; UPDATE scores SET p1 = 0.99'')')",
    "CALL postgres_execute('store', 'COMMIT; UPDATE scores SET p1 = 0.99')",
    "SELECT * FROM postgres_query('store', 'SELECT 1')",
    "SELECT * FROM \"QUERY\"('SELECT 42')",
    "SELECT * FROM system.main.query('SELECT 42')",
    "SELECT * FROM query /* a comment */ ('SELECT 42')",
    "SELECT * FROM query_table('chosen_models')",
    "SELECT * FROM postgres_scan('dbname=postgres', 'public', 'scores')",
    "CREATE TEMP TABLE x AS SELECT * FROM query('SELECT 42')",
]


@pytest.mark.parametrize("statement", RAW)
def test_3_console_refuses_query_and_postgres_functions(seeded: str, statement: str) -> None:
    before = snapshot(seeded)
    result = sql(seeded, statement)
    assert_one_error(result, "read-only")
    assert snapshot(seeded) == before


def test_3_a_read_only_role_is_the_real_guarantee(postgres_url: str) -> None:
    """The README's analyst role can run the console, and cannot write even past the filter."""
    db.upgrade(postgres_url)
    engine = db.open_store(postgres_url)
    seed(engine)
    role = f"analyst_{uuid.uuid4().hex[:8]}"
    dbname = sa.make_url(postgres_url).database
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for line in [f"CREATE ROLE {role} LOGIN", f'GRANT CONNECT ON DATABASE "{dbname}" TO {role}',
                     f"GRANT USAGE ON SCHEMA public TO {role}", f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}",
                     f"ALTER ROLE {role} SET default_transaction_read_only = on"]:
            conn.exec_driver_sql(line)
    analyst = sa.make_url(postgres_url).set(username=role).render_as_string(hide_password=False)
    try:
        result = invoke("--db", analyst, "sql", "SELECT count(*) AS n FROM token_scores", "--prompt-set", "s",
                        "--format", "csv")
        assert result.exit_code == 0, result.output
        assert result.output == "n\n18\n"
        con = fusion.attach(analyst)  # the filter bypassed: the role must still refuse
        with pytest.raises(Exception, match="permission denied|read-only"):
            con.execute("CALL postgres_execute('store', 'COMMIT; UPDATE scores SET p1 = 0.99')")
        con.close()
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM scores WHERE p1 = 0.99")).scalar() == 0
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()
        engine.dispose()


# ----------------------------------------------------------------- 4. the password never shows
@pytest.mark.parametrize("statement", [
    "SELECT path FROM duckdb_databases()",
    "PRAGMA database_list",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM no_such_table",
])
def test_4_console_never_prints_the_postgres_password(postgres_url: str, statement: str) -> None:
    db.upgrade(postgres_url)
    engine = db.open_store(postgres_url)
    seed(engine)
    engine.dispose()
    password = "hunter2-" + uuid.uuid4().hex[:6]  # the test server trusts loopback: any password works
    url = sa.make_url(postgres_url).set(password=password).render_as_string(hide_password=False)
    result = invoke("--db", url, "sql", statement, "--prompt-set", "s", "--format", "json")
    assert password not in result.output


# ------------------------------------------------------------------ 5. parse, do not grep
@pytest.mark.parametrize("statement, expected", [
    ("SELECT 'postgres_query is a function' AS x", "postgres_query is a function"),
    ("SELECT 'query(1)' AS x", "query(1)"),
    ("SELECT 1 AS query", "1"),
    ("SELECT 'x' AS postgres_execute -- postgres_execute(", "x"),
])
def test_5_a_mention_in_a_string_or_a_name_is_not_refused(seeded: str, statement: str, expected: str) -> None:
    result = sql(seeded, statement, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1] == expected


# --------------------------------------------------------------- 6. exports cannot destroy
@pytest.fixture
def sqlite_seeded(sqlite_url: str) -> str:
    db.upgrade(sqlite_url)
    engine = db.open_store(sqlite_url)
    seed(engine)
    engine.dispose()
    return sqlite_url


def export(db_url: str, out: Path | str, *extra: str):
    return invoke("--db", db_url, "export", "--dataset", "d", "--prompt-set", "s", "--top-n", "2", "--out", out,
                  *extra)


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_6_export_refuses_the_store_files(sqlite_seeded: str, suffix: str) -> None:
    store_file = sqlite_path(sqlite_seeded)
    target = Path(str(store_file) + suffix)
    target.touch()
    digest = file_digest(store_file)
    before = snapshot(sqlite_seeded)
    assert_one_error(export(sqlite_seeded, target), "curation database")
    assert file_digest(store_file) == digest
    assert snapshot(sqlite_seeded) == before


def test_6_export_refuses_a_link_to_the_store(sqlite_seeded: str, tmp_path: Path) -> None:
    store_file = sqlite_path(sqlite_seeded)
    link = tmp_path / "innocent.json"
    link.symlink_to(store_file)
    digest = file_digest(store_file)
    assert_one_error(export(sqlite_seeded, link), "curation database")
    assert file_digest(store_file) == digest and link.is_symlink()


def test_6_export_refuses_fifos_and_devices(sqlite_seeded: str, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_one_error(export(sqlite_seeded, fifo), "not a regular file")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a private /dev/null
    except (PermissionError, OSError):
        device = Path("/dev/null")  # only read here: the refusal happens before any write
    assert_one_error(export(sqlite_seeded, device), "not a regular file")
    assert stat.S_ISCHR(device.lstat().st_mode)


def test_6_export_writes_through_a_symlink_and_keeps_modes(sqlite_seeded: str, tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    result = export(sqlite_seeded, link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and len(json.loads(real.read_text())) == 2
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # the replaced file keeps its mode
    old = os.umask(0o027)
    try:
        assert export(sqlite_seeded, tmp_path / "new.json").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640  # 0666 & ~umask


# ------------------------------------------------- 7. {input} shares no line with other fields
@pytest.mark.parametrize("line", [
    "Q: {instruction} {input}\\n{output}\\nRating: ",
    "{instruction}\\n{input} {output}\\nRating: ",
    "{instruction}\\n{output}\\n{input} Rating: ",
])
def test_7_input_must_be_on_a_line_of_its_own(cli, db_url: str, tmp_path: Path, line: str) -> None:
    path = tmp_path / "p.txt"
    path.write_text(line + "\n", encoding="utf-8")
    assert cli("prompts").exit_code == 0
    before = snapshot(db_url)
    result = invoke("--db", db_url, "prompts", "import", path, "--set", "x", "--layout", "shared-context")
    assert_one_error(result, "{input}", "a line of its own")
    assert snapshot(db_url) == before
    path.write_text("{instruction}\\n{input}\\n{output}\\nRating: \n", encoding="utf-8")
    assert invoke("--db", db_url, "prompts", "import", path, "--set", "x", "--layout", "shared-context").exit_code == 0


# ----------------------------------------------------------------- 8. deep nesting
DEEP = "[" * 10_000 + "]" * 10_000


def test_8_deep_nesting_is_an_invalid_record(cli, db_url: str, tmp_path: Path) -> None:
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


# ------------------------------------------------------------- 9. non-finite numbers
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e309"])
@pytest.mark.parametrize("command", ["rank", "select", "export"])
def test_9_min_score_must_be_finite(seeded: str, tmp_path: Path, command: str, value: str) -> None:
    args = {"rank": ["rank"], "select": ["select", "v1"], "export": ["export", "--out", tmp_path / "o.json"]}[command]
    before = snapshot(seeded)
    result = invoke("--db", seeded, *args, "--dataset", "d", "--prompt-set", "s", f"--min-score={value}")
    assert_one_error(result, "--min-score", "finite")
    assert snapshot(seeded) == before and not (tmp_path / "o.json").exists()


# ------------------------------------------------------- 10. a file that is not a database
@pytest.mark.parametrize("command", [["status"], ["datasets"], ["init"], ["ingest", "{data}", "--dataset", "x"],
                                     ["sql", "SELECT 1"], ["rank", "--dataset", "d"]])
def test_10_a_text_file_as_the_database(tmp_path: Path, command: list[str]) -> None:
    fake = tmp_path / "notes.db"
    fake.write_text("these are my notes, not a database\n" * 20)
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    digest = file_digest(fake)
    result = invoke("--db", f"sqlite:///{fake}", *[c.format(data=data) for c in command])
    assert_one_error(result, "not a SQLite database")
    assert file_digest(fake) == digest


# --------------------------------------------------------------- 11. a read-only database
@pytest.mark.parametrize("query", ["mode=ro&uri=true", "immutable=1&uri=true"])
@pytest.mark.parametrize("command", [["ingest", "{data}", "--dataset", "x"],
                                     ["prompts", "import", "{prompts}", "--set", "x", "--layout", "reference"]])
def test_11_a_read_only_database(sqlite_url: str, tmp_path: Path, query: str, command: list[str]) -> None:
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


# ------------------------------------------------------- 12/13. unreachable or unknown stores
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("command", [["init"], ["status"]])
def test_12_init_and_status_against_nothing(tmp_path: Path, command: list[str]) -> None:
    url = f"postgresql://selectit@127.0.0.1:{_free_port()}/selectit"
    assert_one_error(invoke("--db", url, *command), "cannot connect")
    assert_one_error(invoke("--db", f"sqlite:///{tmp_path}", *command), "directory")


@pytest.mark.parametrize("url, phrase", [
    ("mysql://u@localhost/x", "sqlite"),
    ("notaurl", "not a database URL"),
    ("postgresql+nosuchdriver://u@h/x", "sqlite"),
])
@pytest.mark.parametrize("command", [["init"], ["status"], ["sql", "SELECT 1"]])
def test_13_unsupported_or_malformed_urls(url: str, phrase: str, command: list[str]) -> None:
    assert_one_error(invoke("--db", url, *command), phrase)


# --------------------------------------------------------- 14. concurrent ingest, new dataset
def test_14_concurrent_ingests_into_a_new_dataset_both_succeed(postgres_url: str, tmp_path: Path) -> None:
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
    with engine.connect() as watch:  # wait until it is blocked on our row lock
        for _ in range(600):
            waiting = watch.execute(sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar()
            if waiting or proc.poll() is not None:
                break
            time.sleep(0.1)
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


# ------------------------------------------------------------------ 15. a server that never answers
def test_15_a_silent_server_times_out(tmp_path: Path) -> None:
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


# ---------------------------------------------------------------- 16. broken model sources
def test_16_junk_model_sources(cli, db_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(100))
    assert_one_error(invoke("--db", db_url, "model", "add", "j", "--source", junk), "junk.gguf")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "config.json").write_text("{not json")
    assert_one_error(invoke("--db", db_url, "model", "add", "b", "--source", broken), "config.json")
    models = invoke("--db", db_url, "models")
    assert models.exit_code == 0 and " j " not in models.output and " b " not in models.output


# ------------------------------------------------------------ 17. model numbers
@pytest.mark.parametrize("option, value, phrase", [
    ("--max-tokens", "-5", "--max-tokens"), ("--max-tokens", "0", "--max-tokens"),
    ("--weight", "inf", "--weight"), ("--weight", "nan", "--weight"), ("--weight", "1e309", "--weight"),
    ("--weight", "0", "--weight"), ("--weight", "-1", "--weight"),
])
def test_17_model_add_refuses_bad_numbers(cli, db_url: str, tiny_model_dir: Path, option: str, value: str,
                                          phrase: str) -> None:
    assert cli("model", "add", "tiny", "--source", tiny_model_dir, "--dtype", "float32").exit_code == 0
    before = snapshot(db_url)
    result = invoke("--db", db_url, "model", "add", "tiny", "--source", tiny_model_dir, "--dtype", "float32",
                    f"{option}={value}")
    assert_one_error(result, phrase)
    assert snapshot(db_url) == before


# ------------------------------------------------------------------------- 18. names
BAD_NAMES = ["", "   ", "two\nlines", "a\rb", "tab\there", "nul\x00x", "esc\x1b[31m"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_18_names_are_non_empty_single_line(seeded: str, tmp_path: Path, name: str) -> None:
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    prompts = tmp_path / "p.txt"
    prompts.write_text("Rate it.\n")
    before = snapshot(seeded)
    for args in (["ingest", data, "--dataset", name],
                 ["prompts", "import", prompts, "--set", name, "--layout", "reference"],
                 ["select", name, "--dataset", "d", "--prompt-set", "s"],
                 ["model", "add", name, "--source", tmp_path / "nowhere.gguf"]):
        assert_one_error(invoke("--db", seeded, *args), "name")
    assert snapshot(seeded) == before


def test_18_names_are_stored_in_nfc(cli, db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    assert cli("ingest", data, "--dataset", nfc).exit_code == 0
    result = cli("ingest", data, "--dataset", nfd)
    assert result.exit_code == 0 and "new 0, duplicates 1" in result.output
    with db.make_engine(db_url).connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM datasets")).scalars().all() == [nfc]


def test_18_quotes_and_unicode_in_names_round_trip(seeded: str, tmp_path: Path) -> None:
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    name = "it's \"quoted\"; DROP TABLE samples; -- ✓"
    assert invoke("--db", seeded, "ingest", data, "--dataset", name).exit_code == 0
    result = invoke("--db", seeded, "rank", "--dataset", name, "--prompt-set", "s")
    assert result.exit_code == 0, result.output
    assert "rankable: 0 of 1 samples" in result.output


# -------------------------------------------------------------------- 19. URI-form SQLite URLs
def test_19_sql_reads_a_uri_form_sqlite_url(sqlite_seeded: str) -> None:
    path = sqlite_path(sqlite_seeded)
    result = invoke("--db", f"sqlite:///file:{path}?mode=ro&uri=true", "sql", "SELECT count(*) AS n FROM store.scores",
                    "--prompt-set", "s", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output == "n\n18\n"


# ------------------------------------------------------------------- 20. a file without records
@pytest.mark.parametrize("content", ["[]", "[]\n", "  [ ]  ", ""])
def test_20_a_file_without_records_is_an_error(cli, db_url: str, tmp_path: Path, content: str) -> None:
    path = tmp_path / "none.json"
    path.write_text(content)
    assert_one_error(invoke("--db", db_url, "ingest", path, "--dataset", "nothing"), "Nothing was ingested")
    assert "nothing" not in cli("datasets").output


# -------------------------------------------------------------- 21. encodings and JSON types
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32"])
def test_21_utf16_files_get_a_hint(cli, db_url: str, tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "wide.json"
    path.write_bytes(json.dumps([{"instruction": "i", "output": "o"}]).encode(encoding))
    assert_one_error(invoke("--db", db_url, "ingest", path, "--dataset", "w"),
                     "UTF-16" if "16" in encoding else "UTF-32", "iconv")


def test_21_a_truncated_jsonl_line_names_its_end(cli, db_url: str, tmp_path: Path) -> None:
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
def test_21_messages_speak_json(cli, db_url: str, tmp_path: Path, content: str, phrase: str) -> None:
    path = tmp_path / "t.json"
    path.write_text(content)
    line = assert_one_error(invoke("--db", db_url, "ingest", path, "--dataset", "t"), phrase)
    for python_name in ("NoneType", "got list", "got dict", "got int", "got bool", "got float"):
        assert python_name not in line


@pytest.mark.parametrize("bad_id, phrase", [([1, 2], "field 'id'"), ({"a": 1}, "field 'id'"), (True, "field 'id'"),
                                            (float("nan"), "NaN is not valid JSON")])
def test_21_an_id_must_be_a_string_or_a_number(cli, db_url: str, tmp_path: Path, bad_id: object, phrase: str) -> None:
    path = tmp_path / "ids.json"
    path.write_text(json.dumps([{"instruction": "i", "output": "o", "id": bad_id}]))
    assert_one_error(invoke("--db", db_url, "ingest", path, "--dataset", "ids"), phrase)
    path.write_text(json.dumps([{"instruction": "i", "output": "o", "id": 7}, {"instruction": "j", "output": "o",
                                                                               "id": "x-1"}]))
    assert cli("ingest", path, "--dataset", "ids").exit_code == 0
    with db.make_engine(db_url).connect() as conn:
        ids = conn.execute(sa.text("SELECT original_id FROM dataset_samples ORDER BY position")).scalars().all()
    assert ids == ["7", "x-1"]


# -------------------------------------------------------------------- 22. an empty URL
def test_22_an_empty_database_url_is_an_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert_one_error(invoke("--db", "", "status"), "empty")
    assert_one_error(invoke("status", env={db.URL_ENV: ""}), "empty", db.URL_ENV)
    assert list(tmp_path.iterdir()) == []
