"""The schema: migrations build it on SQLite and PostgreSQL, and agree with the ORM."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from selectit.store import db
from selectit.store.schema import Base


def test_upgrade_head_on_empty_database(db_url: str) -> None:
    engine = db.make_engine(db_url)
    assert db.current_revision(engine) is None
    db.upgrade(db_url)
    assert db.current_revision(engine) == db.head_revision()
    tables = set(sa.inspect(engine).get_table_names())
    assert {"datasets", "samples", "dataset_samples", "models", "prompts", "scores", "jobs",
            "selections", "selection_samples"} <= tables
    engine.dispose()


def test_orm_and_migrations_agree(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_upgrade_is_idempotent(db_url: str) -> None:
    db.upgrade(db_url)
    db.upgrade(db_url)
    engine = db.make_engine(db_url)
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


def test_database_behind_is_refused_with_the_upgrade_command(db_url: str) -> None:
    engine = db.make_engine(db_url)
    with engine.begin() as conn:  # a database of another (older) revision
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('0000')")
    with pytest.raises(db.StoreError, match=r"at revision 0000.*Run `selectit --db .* init` to upgrade it"):
        db.open_store(db_url)
    engine.dispose()


def test_empty_database_is_initialised_on_first_use(db_url: str) -> None:
    engine = db.open_store(db_url)
    assert db.current_revision(engine) == db.head_revision()
    engine.dispose()


def test_init_command_reports_the_upgrade(cli) -> None:
    first = cli("init")
    assert first.exit_code == 0 and "upgraded: empty →" in first.output
    again = cli("init")
    assert again.exit_code == 0 and "is up to date" in again.output


def test_sqlite_uses_wal_and_a_busy_timeout(sqlite_url: str) -> None:
    engine = db.open_store(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == db.SQLITE_BUSY_TIMEOUT_MS
    engine.dispose()
