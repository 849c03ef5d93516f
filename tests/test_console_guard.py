"""The SQL console's guard: statements are checked without opening any file, EXPLAIN ANALYZE is
checked by what it explains, checkpoints are refused, no URL secret is ever shown, and a URL's own
`options=` cannot make the PostgreSQL session writable. On SQLite and the real PostgreSQL server.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import pytest
from guards import assert_one_error, invoke, merge_wal, snapshot, sqlite_path
from test_fusion import seed

from selectit.fusion import views as fusion
from selectit.store import db

SECRET = "TOPSECRET-4711"


@pytest.fixture
def seeded(engine, db_url: str) -> str:
    seed(engine)
    merge_wal(engine)  # the digests below compare the file: nothing may be pending in the WAL
    return db_url


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
