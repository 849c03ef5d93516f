"""Connecting to the curation database and keeping its schema at the migrations' head.

SQLite (a file, WAL, busy timeout) is the default; any SQLAlchemy URL works, PostgreSQL through
psycopg 3 for a fleet. Every command that touches the database goes through `open_store`, which
refuses a schema that is behind the code.
"""

from __future__ import annotations

import importlib.util
import os
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from selectit.errors import SelectitError
from selectit.settings import environment
from selectit.store import sqlite_locks

DEFAULT_URL = "sqlite:///selectit.db"
URL_ENV = "SELECTIT_DATABASE_URL"
# Waiting on a lock beats failing: several local workers share one SQLite file.
SQLITE_BUSY_TIMEOUT_MS = 60_000


#: What the database drivers raise (SQLAlchemy wraps them all), for callers that import no SQLAlchemy.
DriverError = sa.exc.DBAPIError


class StoreError(SelectitError):
    """A problem with the curation database that the user can act on."""


#: What to write instead of a secret in a URL that is shown.
MASK = "***"


def is_secret_key(key: str) -> bool:
    """Whether a URL query parameter carries a secret (`password`, `sslpassword`, a token…)."""
    low = key.lower()
    return any(word in low for word in ("password", "secret", "token", "passphrase"))


def shown_url(url: str | sa.URL | None) -> str:
    """The database URL for messages: the password and every secret-bearing query parameter masked.

    >>> shown_url("postgresql://u:pw@h/db?sslpassword=k&sslmode=require")
    'postgresql+psycopg://u:***@h/db?sslmode=require&sslpassword=***'
    """
    try:
        parsed = url if isinstance(url, sa.URL) else sa.make_url(resolve_url(url))
    except (sa.exc.ArgumentError, ValueError):
        return "the database URL"
    placeholder = "selectitmasked"  # survives URL quoting, unlike '*'
    masked = {k: placeholder for k in parsed.query if is_secret_key(k)}
    shown = parsed.update_query_dict(masked).render_as_string(hide_password=True)
    return shown.replace(placeholder, MASK)


def check_url(url: str | None) -> sa.URL:
    """The parsed database URL, or a `StoreError` for one no command could open: empty, not a
    URL, a bad port, another database than SQLite or PostgreSQL, a driver that is missing."""
    if url is None and environment(URL_ENV) is not None and not environment(URL_ENV).strip():
        raise StoreError(f"${URL_ENV} is set but empty; unset it to use ./selectit.db, or give a database URL")
    if url is not None and not str(url).strip():
        raise StoreError("the database URL is empty; give one, e.g. --db sqlite:///selectit.db "
                         "or --db postgresql://user@host/selectit")
    try:
        resolve_url(url).encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError(f"the database URL {os.fsencode(resolve_url(url))!r} is not valid UTF-8; "
                         f"give the database a UTF-8 name") from None
    try:
        parsed = sa.make_url(resolve_url(url))
    except sa.exc.ArgumentError:
        raise StoreError(f"{url!r} is not a database URL; give e.g. sqlite:///selectit.db or "
                         f"postgresql://user@host/selectit") from None
    except ValueError as exc:  # e.g. a port that is not a number
        raise StoreError(f"the database URL has a bad part ({exc}); write e.g. "
                         f"postgresql://user@host:5432/selectit") from None
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise StoreError(f"the database URL has a bad part (port {parsed.port} is not in 1-65535); write e.g. "
                         f"postgresql://user@host:5432/selectit")
    supported = "selectit stores its data in SQLite (sqlite:///FILE) or PostgreSQL (postgresql://…, psycopg 3)"
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise StoreError(f"{supported}, not {parsed.get_backend_name()}")
    try:
        parsed.get_dialect().import_dbapi()
    except (sa.exc.NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"{supported}; the driver of {parsed.drivername!r} cannot be loaded ({exc})") from None
    return parsed


def sqlite_file(db_url: str | None) -> Path | None:
    """The file of a SQLite store URL (plain or URI form, `sqlite:///file:PATH?mode=ro&uri=true`); else None."""
    url = sa.make_url(resolve_url(db_url))
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    path = url.database
    if str(url.query.get("uri", "")).lower() in ("true", "1") and path.startswith("file:"):
        path = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
    return Path(path)


def store_files(db_url: str | None) -> list[Path]:
    """The files that make up a SQLite store (database, WAL, shared memory, journal); [] for a server.

    SQLite names the WAL after the database's real path, so the names are derived from the resolved
    path (a store reached through a symlink) as well as from the path as given.
    """
    path = sqlite_file(db_url)
    if path is None:
        return []
    files: list[Path] = []
    for base in dict.fromkeys([path, Path(os.path.realpath(path))]):
        files += [base] + [Path(f"{base}{suffix}") for suffix in ("-wal", "-shm", "-journal")]
    return files


def _one_line(text: object) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def explain_error(exc: BaseException, url: str | None) -> str | None:
    """What a driver's error says about the database, in one line with the next step; else None."""
    if isinstance(exc, StoreError) and exc.__cause__ is not None:
        return explain_error(exc.__cause__, url)
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    shown = shown_url(url)
    reason = _one_line(exc.orig if exc.orig is not None else exc)
    low = reason.lower()
    path = sqlite_file(url) if shown.startswith("sqlite") else None
    if "file is not a database" in low:
        return (f"{path} is not a SQLite database ({reason}); give the path of a selectit database, "
                f"or a new file name to create one")
    if "readonly database" in low or "read-only" in low:
        return (f"the database {shown} is read-only ({reason}); this command writes to it: open it writable, "
                f"or work on a copy")
    if "unable to open database file" in low:
        if path is not None and path.is_dir():
            return f"{path} is a directory, not a SQLite database file; give a file path, e.g. {path / 'selectit.db'}"
        return f"cannot open the SQLite database {shown} ({reason}); check that its directory exists and is writable"
    if "disk i/o error" in low or "database or disk is full" in low:
        return (f"cannot write the database {shown} ({reason}); check that its disk has space "
                f"(No space left on device?) and is writable")
    if "timeout expired" in low or "timed out" in low:
        return (f"{shown} did not answer within {connect_timeout()} s; check the host and port, or wait longer "
                f"with ${CONNECT_TIMEOUT_ENV}")
    if shown.startswith("postgresql") and isinstance(exc, sa.exc.OperationalError):
        return f"cannot connect to {shown}: {reason}"
    return f"the database {shown} refused the command: {reason}"


#: Seconds to wait for a PostgreSQL server to answer a connection (a silent server never hangs us).
CONNECT_TIMEOUT_ENV = "SELECTIT_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT = 10


def connect_timeout() -> int:
    """$SELECTIT_CONNECT_TIMEOUT in whole seconds (default 10)."""
    raw = (environment(CONNECT_TIMEOUT_ENV) or "").strip()
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
    url = url or environment(URL_ENV) or DEFAULT_URL
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


#: Execution option that marks an engine's transactions as reads (see `reading`).
_READ_ONLY_OPTION = "selectit_read_only"


def reading(engine: Engine) -> Engine:
    """`engine` for transactions that only read: on SQLite they begin deferred, so they never
    wait for (or block) a writer; on PostgreSQL nothing changes. Writes stay on `engine` itself.

    >>> reading(make_engine("sqlite://")).get_execution_options()["selectit_read_only"]
    True
    """
    return engine.execution_options(**{_READ_ONLY_OPTION: True})


@contextmanager
def read_scope(engine: Engine) -> Iterator[Session]:
    """A session that only reads (deferred on SQLite, see `reading`), rolled back at the end."""
    session = sessionmaker(reading(engine), expire_on_commit=False)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def make_engine(url: str | None = None) -> Engine:
    """An engine on `url` (SQLite: WAL, busy timeout, writers BEGIN IMMEDIATE); a `StoreError` for
    a URL whose parts the driver refuses (`?timeout=abc`, `?check_same_thread=maybe`)."""
    check_url(url)
    try:
        return _create_engine(resolve_url(url))
    except (ValueError, TypeError) as exc:
        raise _bad_url_part(url, exc) from None


def _create_engine(url: str) -> Engine:
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
        def _sqlite_begin(conn) -> None:  # noqa: ANN001
            # A writer takes the write lock at BEGIN, so two writers queue on busy_timeout instead
            # of one failing with "database is locked" when it upgrades a read lock. A reader
            # (`reading(engine)`) begins deferred: under WAL it reads the last commit beside a
            # running writer, instead of waiting for a long ingest to end.
            deferred = conn.get_execution_options().get(_READ_ONLY_OPTION, False)
            conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

        # Let SQLAlchemy's `begin` event issue BEGIN itself (pysqlite's own is disabled).
        @sa.event.listens_for(engine, "connect", insert=True)
        def _no_implicit_begin(dbapi_conn, _record) -> None:  # noqa: ANN001
            dbapi_conn.isolation_level = None

        path = sqlite_file(url)
        if path is not None:  # DuckDB may read this file in this process too (see `sqlite_locks`)
            sqlite_locks.track(engine, path)
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
    checkout = Path(__file__).resolve().parents[2] / _CHECKOUT_DIRS[package]
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
    from alembic.util import CommandError

    from alembic import command

    try:
        command.upgrade(alembic_config(url), revision)
    except CommandError as exc:
        engine = make_engine(url)
        try:
            current = current_revision(reading(engine))
        finally:
            engine.dispose()
        if current is not None and _newer_revision(current):
            raise StoreError(f"the database {shown_url(url)} was created by a newer selectit (schema revision "
                             f"{current}); upgrade selectit") from None
        raise StoreError(f"cannot upgrade the database {shown_url(url)}: {exc}") from exc


def _is_empty(engine: Engine) -> bool:
    return not _foreign_tables(engine)


def _foreign_tables(engine: Engine) -> list[str]:
    """The tables of a database that is not (yet) a selectit store: all of them, in name order."""
    return sorted(t for t in sa.inspect(engine).get_table_names() if not t.startswith("sqlite_"))


def _foreign_store_error(engine: Engine, tables: list[str]) -> StoreError:
    shown = ", ".join(tables[:12]) + (f" and {len(tables) - 12} more" if len(tables) > 12 else "")
    return StoreError(
        f"the database {shown_url(engine.url)} belongs to another application (tables: {shown}); selectit creates a "
        f"store only in an empty database or upgrades its own. Give another --db (a new file or database)"
    )


def _bad_url_part(url: str | None, exc: Exception) -> StoreError:
    """A URL part the driver refuses when it connects (`?timeout=abc`, `?check_same_thread=maybe`)."""
    return StoreError(f"the database URL {shown_url(url)} has a bad part: {exc}")


def _refuse_foreign_sqlite(url: str | None) -> None:
    """Refuse another application's SQLite database before `make_engine` connects: its WAL pragma
    would rewrite the file's header. Read with a plain connection, which changes nothing."""
    check_url(url)
    resolved = resolve_url(url)
    if not resolved.startswith("sqlite"):
        return
    try:
        plain = sa.create_engine(resolved)
    except (ValueError, TypeError) as exc:  # a URL part the driver refuses (`?check_same_thread=maybe`)
        raise _bad_url_part(url, exc) from None
    path = sqlite_file(resolved)
    if path is not None:
        sqlite_locks.track(plain, path)
    try:
        if current_revision(plain) is None:
            tables = _foreign_tables(plain)
            if tables:
                raise _foreign_store_error(plain, tables)
    except sa.exc.DBAPIError as exc:
        raise StoreError(explain_error(exc, url) or f"cannot open the database {shown_url(url)}") from exc
    except (ValueError, TypeError) as exc:  # a URL part the driver refuses (`?timeout=abc`)
        raise _bad_url_part(url, exc) from None
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
    except sa.exc.DBAPIError as exc:
        raise StoreError(explain_error(exc, url) or f"cannot open the database {shown_url(url)}") from exc
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
        current = current_revision(reading(engine))
        if current is None and _is_empty(reading(engine)):
            upgrade(url)
            return engine
    except sa.exc.DBAPIError as exc:
        engine.dispose()
        raise StoreError(explain_error(exc, url) or f"cannot open the database {shown_url(url)}") from exc
    head = head_revision()
    if current is None:
        tables = _foreign_tables(engine)
        engine.dispose()
        raise _foreign_store_error(engine, tables)
    if current != head:
        engine.dispose()
        if current is not None and _newer_revision(current):
            raise StoreError(
                f"the database {shown_url(url)} was created by a newer selectit (schema revision {current}; "
                f"this selectit knows up to {head}); upgrade selectit"
            )
        where = f"--db {shown_url(url)} " if url else ""
        state = f"at revision {current}"
        raise StoreError(
            f"the database {shown_url(url)} is {state}, but this selectit needs revision {head}. "
            f"Run `selectit {where}init` to upgrade it."
        )
    _explain_user_errors(engine, url)
    return engine


#: What a driver says when the database needs the user, not a retry: a read-only file or
#: transaction, a full or failing disk.
_USER_CONDITIONS = ("readonly database", "read-only", "database or disk is full", "disk i/o error")


def _explain_user_errors(engine: Engine, url: str | None) -> None:
    """The store's driver errors that need the user become a `StoreError` with the next step,
    raised by the library itself: a `selectit.open()` user reads the line the CLI prints."""

    @sa.event.listens_for(engine, "handle_error")
    def _explain(context: sa.engine.ExceptionContext) -> StoreError | None:
        exc = context.sqlalchemy_exception
        if not isinstance(exc, sa.exc.DBAPIError) or not any(c in str(exc.orig).lower() for c in _USER_CONDITIONS):
            return None  # the callers' own handling (a lock to wait for, a race to retry) sees it as it is
        error = StoreError(explain_error(exc, url) or str(exc))
        error.__cause__ = exc
        return error


def _newer_revision(revision: str) -> bool:
    """Whether `revision` comes from a newer selectit: unknown to these migrations, and numbered
    after their head (the revisions are numbered 0001, 0002, …)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    scripts = ScriptDirectory.from_config(alembic_config())
    try:
        if scripts.get_revision(revision) is not None:
            return False
    except (CommandError, KeyError):
        pass
    head = scripts.get_current_head() or ""
    return revision.isdigit() and head.isdigit() and int(revision) > int(head)


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

    PostgreSQL: `pg_advisory_xact_lock`. SQLite: nothing to do, every writing transaction already
    holds the database's write lock from its start (`BEGIN IMMEDIATE`, see `make_engine`).
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
