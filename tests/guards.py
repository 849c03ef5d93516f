"""What the guard tests (tests/test_guard_*.py, tests/guards/test_hostile_inputs.py) share.

A refused command must exit 1 with exactly one `Error: …` line, no traceback, and leave the store
as it was: `invoke` runs the CLI catching everything, `assert_one_error` checks the line, and
`snapshot` / `file_digest` show that nothing changed. The fixtures `seeded` and `sqlite_seeded`
are a store with scores seeded directly (`test_fusion.seed`: dataset `d`, models A/B, prompt set
`s`); a test module imports the ones it uses.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_views import seed

from selectit.cli import main
from selectit.store import db


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


def merge_wal(engine: sa.Engine) -> None:
    """Copy what a SQLite store's WAL holds into its file (nothing on PostgreSQL), so that a digest
    of the file changes only when something writes the store. A command that hands the file to
    DuckDB first closes this process's idle connections on it (`selectit.store.sqlite_locks`), the
    test's own too, and the last connection to close merges the WAL."""
    if engine.dialect.name == "sqlite":
        raw = engine.raw_connection()
        try:
            raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            raw.close()


@pytest.fixture
def seeded(engine, db_url: str) -> str:
    """The database URL of a store with a scored dataset `d` (prompt set `s`), its WAL merged."""
    seed(engine)
    merge_wal(engine)
    return db_url


@pytest.fixture
def sqlite_seeded(sqlite_url: str) -> str:
    """The URL of a SQLite store (a real file) with a scored dataset `d` (prompt set `s`)."""
    db.upgrade(sqlite_url)
    engine = db.open_store(sqlite_url)
    seed(engine)
    engine.dispose()
    return sqlite_url
