"""`selectit sql`: the console reads the views and the store, and nothing else.

It writes no file, reads no other file, sends no raw SQL to a PostgreSQL server, never prints the
server's password, and refuses by parsing the SQL (a function named in a string is fine). Runs on
SQLite and PostgreSQL through the CLI; scores are seeded directly (`test_fusion.seed`: dataset
`d`, models A/B, prompt set `s`).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import pytest
import sqlalchemy as sa
from guards import (  # noqa: F401 - seeded and sqlite_seeded are fixtures
    assert_one_error,
    merge_wal,
    file_digest,
    invoke,
    seeded,
    snapshot,
    sqlite_path,
    sqlite_seeded,
)
from test_views import seed

from selectit.fusion import views as fusion
from selectit.store import db


def sql(db_url: str, statement: str, *extra: str):
    return invoke("--db", db_url, "sql", statement, "--prompt-set", "s", *extra)


# ----------------------------------------------------------------------- the console writes no file
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


def test_console_cannot_write_any_file(seeded: str, tmp_path: Path) -> None:
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
def test_console_refuses_logging_to_files(seeded: str, tmp_path: Path, call: str) -> None:
    # A subprocess: before the fix DuckDB could abort the whole process (rc 134).
    out = tmp_path / "logs"
    proc = subprocess.run([sys.executable, "-m", "selectit", "--db", seeded, "sql", call.format(out=out),
                           "--prompt-set", "s"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith("Error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


# ------------------------------------------------------------------------ the console reads no file
def test_console_cannot_read_other_files(seeded: str, tmp_path: Path) -> None:
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


# --------------------------------------------------------- no raw SQL reaches the PostgreSQL server
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
def test_console_refuses_query_and_postgres_functions(seeded: str, statement: str) -> None:
    before = snapshot(seeded)
    result = sql(seeded, statement)
    assert_one_error(result, "read-only")
    assert snapshot(seeded) == before


def test_a_read_only_postgres_role_is_the_real_guarantee(postgres_url: str) -> None:
    """The analyst role of docs/safety.md can run the console, and cannot write even past the filter."""
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


# ------------------------------------------------------------------------- the password never shows
@pytest.mark.parametrize("statement", [
    "SELECT path FROM duckdb_databases()",
    "PRAGMA database_list",
    "SELECT * FROM duckdb_settings()",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM no_such_table",
])
def test_console_never_prints_the_postgres_password(postgres_url: str, statement: str) -> None:
    db.upgrade(postgres_url)
    engine = db.open_store(postgres_url)
    seed(engine)
    engine.dispose()
    password = "hunter2-" + uuid.uuid4().hex[:6]  # the test server trusts loopback: any password works
    url = sa.make_url(postgres_url).set(password=password).render_as_string(hide_password=False)
    result = invoke("--db", url, "sql", statement, "--prompt-set", "s", "--format", "json")
    assert password not in result.output


# ------------------------------------------------------------------------------- parse, do not grep
@pytest.mark.parametrize("statement, expected", [
    ("SELECT 'postgres_query is a function' AS x", "postgres_query is a function"),
    ("SELECT 'query(1)' AS x", "query(1)"),
    ("SELECT 1 AS query", "1"),
    ("SELECT 'x' AS postgres_execute -- postgres_execute(", "x"),
])
def test_a_function_named_in_a_string_or_an_alias_is_not_refused(seeded: str, statement: str, expected: str) -> None:
    result = sql(seeded, statement, "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1] == expected


# ----------------------------------------------------------------------------- URI-form SQLite URLs
def test_sql_reads_a_uri_form_sqlite_url(sqlite_seeded: str) -> None:
    path = sqlite_path(sqlite_seeded)
    result = invoke("--db", f"sqlite:///file:{path}?mode=ro&uri=true", "sql", "SELECT count(*) AS n FROM store.scores",
                    "--prompt-set", "s", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert result.output == "n\n18\n"


# ------------------------------------------------------------------------------------------
# Statements checked without opening a file, EXPLAIN, checkpoints, secrets, options=

SECRET = "TOPSECRET-4711"


def _digest(db_url: str) -> str | None:
    path = sqlite_path(db_url)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path else None


def test_import_database_is_refused_before_any_file_is_read(seeded: str, tmp_path: Path) -> None:
    planted = tmp_path / "planted"
    planted.mkdir()
    (planted / "schema.sql").write_text(f"{SECRET} TABLE x;\n")
    exported = tmp_path / "exported"
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT 1 AS a")
    con.execute(f"EXPORT DATABASE '{exported}'")
    con.close()
    for directory in (planted, exported):
        line = assert_one_error(invoke("--db", seeded, "sql", f"IMPORT DATABASE '{directory}'"), "read-only")
        assert SECRET not in line and len(line) < 300, line


@pytest.mark.parametrize("statement", [
    "CHECKPOINT", "FORCE CHECKPOINT", "VACUUM", "BEGIN", "CALL pragma_version()", "PREPARE p AS SELECT 1",
    "MERGE INTO chosen_models USING chosen_models AS s ON true WHEN MATCHED THEN DELETE",
    "SET threads = 1",
])
def test_explain_analyze_is_checked_by_the_explained_statement(seeded: str, statement: str) -> None:
    before, digest = snapshot(seeded), _digest(seeded)
    for prefix in ("EXPLAIN ANALYZE", "EXPLAIN", "/* c */ EXPLAIN /* d */ ANALYZE"):
        assert_one_error(invoke("--db", seeded, "sql", f"{prefix} {statement}"), "not allowed")
    assert snapshot(seeded) == before and _digest(seeded) == digest


def test_explain_of_a_query_still_works(seeded: str) -> None:
    for query in ("EXPLAIN ANALYZE SELECT count(*) FROM store.samples", "EXPLAIN (FORMAT json) SELECT 1"):
        result = invoke("--db", seeded, "sql", query, "--format", "csv")
        assert result.exit_code == 0 and "plan" in result.output, result.output


@pytest.mark.parametrize("call", ["SELECT checkpoint('store')", "SELECT * FROM force_checkpoint('store')",
                                  'SELECT "CHECKPOINT"()'])
def test_checkpoint_functions_are_refused(seeded: str, call: str) -> None:
    digest = _digest(seeded)
    assert_one_error(invoke("--db", seeded, "sql", call), "checkpoint() is not allowed")
    assert _digest(seeded) == digest


# ------------------------------------------------------------------------------ PostgreSQL URLs
@pytest.fixture
def pg_engine(postgres_url: str):  # noqa: ANN201
    """An engine on a fresh PostgreSQL store at head (these tests are about PostgreSQL URLs)."""
    engine = db.open_store(postgres_url)
    yield engine
    engine.dispose()


def test_url_passwords_are_masked_everywhere(pg_engine, postgres_url: str) -> None:
    seed(pg_engine)
    url = f"{postgres_url}?password={SECRET}&sslpassword={SECRET}x&sslmode=disable"
    shown = invoke("--db", url, "init")
    assert shown.exit_code == 0 and SECRET not in shown.output and "password=***" in shown.output, shown.output
    missing = url.replace(postgres_url.rsplit("/", 1)[1], "no_such_db")
    for args in (["status"], ["datasets"], ["sql", "SELECT 1"]):
        line = assert_one_error(invoke("--db", missing, *args))
        assert SECRET not in line, line
    for query in ("SELECT path FROM duckdb_databases()", "SELECT secret_string FROM duckdb_secrets()"):
        result = invoke("--db", url, "sql", query, "--format", "csv")
        assert result.exit_code == 0 and SECRET not in result.output, result.output
    secrets = invoke("--db", url, "sql", "SELECT secret_string FROM duckdb_secrets()", "--format", "csv").output
    assert "sslpassword=redacted" in secrets and "password=redacted" in secrets, secrets


def test_url_options_cannot_make_the_console_writable(pg_engine, postgres_url: str) -> None:
    seed(pg_engine)
    url = f"{postgres_url}?options=-c%20default_transaction_read_only%3Doff%20-c%20search_path%3Dpublic"
    con = fusion.attach(url)
    try:
        settings = con.execute(
            "SELECT * FROM postgres_query('store', 'SELECT current_setting(''default_transaction_read_only'') AS a, "
            "current_setting(''transaction_read_only'') AS b, current_setting(''search_path'') AS c')").fetchone()
    finally:
        con.close()
    assert settings == ("on", "on", "public")
    result = invoke("--db", url, "sql", "SELECT count(*) AS n FROM store.samples", "--format", "csv")
    assert result.exit_code == 0 and result.output == "n\n3\n", result.output
