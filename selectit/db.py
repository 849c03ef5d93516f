"""Connecting to the curation database and keeping its schema at the migrations' head.

SQLite (a file, WAL, busy timeout) is the default; any SQLAlchemy URL works, PostgreSQL through
psycopg 3 for a fleet. Every command that touches the database goes through `open_store`, which
refuses a schema that is behind the code.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

DEFAULT_URL = "sqlite:///selectit.db"
URL_ENV = "SELECTIT_DATABASE_URL"
# Waiting on a lock beats failing: several local workers share one SQLite file.
SQLITE_BUSY_TIMEOUT_MS = 60_000


class StoreError(Exception):
    """A problem with the curation database that the user can act on."""


#: Seconds to wait for a PostgreSQL server to answer a connection (a silent server never hangs us).
CONNECT_TIMEOUT_ENV = "SELECTIT_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 10


def connect_timeout() -> int:
    """$SELECTIT_CONNECT_TIMEOUT in whole seconds (default 10)."""
    raw = os.environ.get(CONNECT_TIMEOUT_ENV, "").strip()
    try:
        value = int(raw) if raw else DEFAULT_CONNECT_TIMEOUT
    except ValueError:
        value = 0
    if value < 1:
        raise StoreError(f"${CONNECT_TIMEOUT_ENV} must be a whole number of seconds >= 1, not {raw!r}")
    return value


def resolve_url(url: str | None = None) -> str:
    """The database URL: explicit, else $SELECTIT_DATABASE_URL, else ./selectit.db.

    >>> resolve_url("postgresql://u@h/db")
    'postgresql+psycopg://u@h/db'
    """
    url = url or os.environ.get(URL_ENV) or DEFAULT_URL
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str | None = None) -> Engine:
    url = resolve_url(url)
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin_immediate(conn) -> None:  # noqa: ANN001
            # Take the write lock at BEGIN, so two writers queue on busy_timeout instead of
            # one failing with "database is locked" when it upgrades a read lock.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        # Let SQLAlchemy's `begin` event issue BEGIN itself (pysqlite's own is disabled).
        @sa.event.listens_for(engine, "connect", insert=True)
        def _no_implicit_begin(dbapi_conn, _record) -> None:  # noqa: ANN001
            dbapi_conn.isolation_level = None

        return engine
    connect_args = {"connect_timeout": connect_timeout()} if url.startswith("postgresql") else {}
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)


#: Where the bundled packages live in a checkout (the wheel maps them under `selectit`).
_CHECKOUT_DIRS = {"selectit._alembic": "alembic", "selectit.migrations": "migrations"}


def _package_dir(package: str) -> str:
    """The directory of a bundled package (`selectit._alembic` → the checkout's `alembic/`).

    Found through the import system, so it is right for a wheel in site-packages and an editable
    install alike; those are always real directories, which Alembic needs. One exception:
    setuptools' editable finder cannot import a directory without `__init__.py` (the Alembic
    environment must not have one, or `alembic/` would shadow the library in a checkout), but
    then the checkout is right beside `selectit/`.
    """
    try:
        spec = importlib.util.find_spec(package)
    except ModuleNotFoundError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    checkout = Path(__file__).resolve().parent.parent / _CHECKOUT_DIRS[package]
    if (checkout / "env.py").is_file() or (checkout / "__init__.py").is_file():
        return str(checkout)
    raise StoreError(f"the package {package} is missing from this selectit installation; reinstall selectit")


def alembic_config(url: str | None = None):  # noqa: ANN201 - alembic imported lazily
    """The Alembic configuration of the bundled environment and migrations, built in code.

    `[tool.alembic]` in pyproject.toml serves `alembic …` run from a checkout; an installed
    selectit has no pyproject.toml, so the library never reads it.
    """
    from alembic.config import Config

    cfg = Config()

    def option(name: str, value: str) -> None:
        cfg.set_main_option(name, value.replace("%", "%%"))  # ConfigParser interpolates '%'

    option("script_location", _package_dir("selectit._alembic"))
    option("version_locations", _package_dir("selectit.migrations"))
    option("path_separator", "os")  # a path with spaces or commas is one path
    cfg.attributes["url"] = resolve_url(url)
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (creating the SQLite file if needed)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def _is_empty(engine: Engine) -> bool:
    return not _foreign_tables(engine)


def _foreign_tables(engine: Engine) -> list[str]:
    """The tables of a database that is not (yet) a selectit store: all of them, in name order."""
    return sorted(t for t in sa.inspect(engine).get_table_names() if not t.startswith("sqlite_"))


def _foreign_store_error(engine: Engine, tables: list[str]) -> StoreError:
    shown = ", ".join(tables[:12]) + (f" and {len(tables) - 12} more" if len(tables) > 12 else "")
    return StoreError(
        f"the database {engine.url!r} belongs to another application (tables: {shown}); selectit creates a "
        f"store only in an empty database or upgrades its own. Give another --db (a new file or database)"
    )


def _refuse_foreign_sqlite(url: str | None) -> None:
    """Refuse another application's SQLite database before `make_engine` connects: its WAL pragma
    would rewrite the file's header. Read with a plain connection, which changes nothing."""
    resolved = resolve_url(url)
    if not resolved.startswith("sqlite"):
        return
    plain = sa.create_engine(resolved)
    try:
        if current_revision(plain) is None:
            tables = _foreign_tables(plain)
            if tables:
                raise _foreign_store_error(plain, tables)
    except sa.exc.DBAPIError as exc:
        raise StoreError(f"cannot open the database {plain.url!r}: {exc.orig}") from exc
    finally:
        plain.dispose()


def init_store(url: str | None = None) -> tuple[str | None, str]:
    """Create the store in an empty (or new) database, or upgrade a selectit one; (before, after) revisions.

    A database that holds other tables and no selectit revision is refused, naming its tables: init
    never adds selectit's tables to another application's database.
    """
    _refuse_foreign_sqlite(url)
    engine = make_engine(url)
    try:
        before = current_revision(engine)
        if before is None:
            tables = _foreign_tables(engine)
            if tables:
                raise _foreign_store_error(engine, tables)
        upgrade(url)
        return before, current_revision(engine) or head_revision()
    except sa.exc.OperationalError as exc:
        raise StoreError(f"cannot open the database {engine.url!r}: {exc.orig}") from exc
    finally:
        engine.dispose()


def open_store(url: str | None = None) -> Engine:
    """An engine on a database whose schema is at head.

    A brand-new, empty database is initialised on the spot (nothing can be lost); one that holds
    tables at an older revision is refused with the command that upgrades it; another application's
    database is refused, naming its tables.
    """
    _refuse_foreign_sqlite(url)
    engine = make_engine(url)
    try:
        current = current_revision(engine)
        if current is None and _is_empty(engine):
            upgrade(url)
            return engine
    except sa.exc.OperationalError as exc:
        raise StoreError(f"cannot open the database {engine.url!r}: {exc.orig}") from exc
    head = head_revision()
    if current is None:
        tables = _foreign_tables(engine)
        engine.dispose()
        raise _foreign_store_error(engine, tables)
    if current != head:
        where = f"--db {resolve_url(url)} " if url else ""
        state = f"at revision {current}"
        raise StoreError(
            f"the database {engine.url!r} is {state}, but this selectit needs revision {head}. "
            f"Run `selectit {where}init` to upgrade it."
        )
    return engine


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error."""
    session = sessionmaker(engine, expire_on_commit=False)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


# --------------------------------------------------------------------------------------------
# Dialect differences of the job runner (PostgreSQL for a fleet, SQLite on one machine)
# --------------------------------------------------------------------------------------------


def upsert(session: Session, table: type) -> sa.Insert:
    """An `INSERT` on `table` with `.on_conflict_do_update/nothing` (the same API on both dialects)."""
    if is_postgres(session.bind):
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def lock_transaction(session: Session, key: int) -> None:
    """Hold lock `key` until the transaction ends, so two holders of one key run one after the other.

    PostgreSQL: `pg_advisory_xact_lock`. SQLite: nothing to do, every transaction already holds
    the database's write lock from its start (`BEGIN IMMEDIATE`, see `make_engine`).
    """
    if is_postgres(session.bind):
        session.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def skip_locked(query: sa.Select, session: Session) -> sa.Select:
    """Lock the selected rows, skipping rows another transaction holds (PostgreSQL).

    SQLite has no row locks; its writers are serialised by `BEGIN IMMEDIATE` instead.
    """
    if is_postgres(session.bind):
        return query.with_for_update(skip_locked=True)
    return query


def copy_rows(session: Session, table: str, columns: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """PostgreSQL `COPY table (columns) FROM STDIN` of `rows`, in the session's transaction."""
    raw = session.connection().connection.driver_connection
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def copy_text(session: Session, table: str, columns: Sequence[str], text: str) -> None:
    """PostgreSQL `COPY table (columns) FROM STDIN` of `text` (tab-separated lines) in one write."""
    raw = session.connection().connection.driver_connection
    with raw.cursor() as cur, cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        copy.write(text)


def json_int_elements(session: Session, array: str, alias: str) -> tuple[str, str]:
    """(FROM item, value expression): one row per element of the JSON array of integers `array`."""
    if is_postgres(session.bind):
        return f"json_array_elements_text({array}) AS {alias}(value)", f"CAST({alias}.value AS INTEGER)"
    return f"json_each({array}) AS {alias}", f"{alias}.value"
