"""An in-memory DuckDB with the curation database attached READ-ONLY as `store`: SQLite through
DuckDB's `sqlite` extension, PostgreSQL through `postgres` (the password in a DuckDB secret, the
session read-only), and the SQL-text helpers every fusion module uses.

    >>> con = attach("sqlite:///selectit.db")  # doctest: +SKIP
    >>> con.execute("SELECT count(*) FROM store.samples").fetchone()  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import duckdb
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from selectit.contract import valid_name
from selectit.errors import NoSuchDataset
from selectit.fusion.errors import FusionError
from selectit.fusion.extensions import extension_path
from selectit.store import db, sqlite_locks


#: libpq settings that go into a DuckDB secret, never into the visible path (with every
#: secret-bearing query parameter, `db.is_secret_key`).
_SECRET_KEYS = {"host": "HOST", "port": "PORT", "dbname": "DATABASE", "user": "USER", "password": "PASSWORD"}
#: The console's PostgreSQL session: every transaction read-only, even after a COMMIT.
_READ_ONLY_OPTIONS = "-c default_transaction_read_only=on"


def libpq_parts(url: sa.URL) -> dict[str, str]:
    """libpq keywords for a SQLAlchemy PostgreSQL URL (empty values left out)."""
    parts: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
    }
    parts.update({k: (v[-1] if isinstance(v, tuple) else v) for k, v in url.query.items()})
    return {k: str(v) for k, v in parts.items() if v not in (None, "")}


def libpq(parts: dict[str, str] | sa.URL) -> str:
    """A libpq key=value connection string (of keywords, or of a whole URL)."""
    if isinstance(parts, sa.URL):
        parts = libpq_parts(parts)

    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{k}={quote(v)}" for k, v in parts.items())


def sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def one_line(exc: BaseException) -> str:
    """DuckDB's message without its multi-line `LINE 1: …^` pointer, on one line."""
    text = str(exc).split("\n\nLINE ", 1)[0]
    return " ".join(text.split())


def _end_result(con: duckdb.DuckDBPyConnection) -> None:
    """Close `con`'s pending result, and with it the SQLite handles a result not read to the end
    keeps open (`sqlite_locks`); nothing to do on a closed connection."""
    try:
        con.execute("SELECT 1")
    except duckdb.ConnectionException:
        pass


def attach(db_url: str | None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the curation database attached read-only as `store`.

    Right after the ATTACH external access is turned off: nothing but the attached store can be
    read or written from here on (the views keep working; the extensions read the store through
    their own connections). The PostgreSQL password goes into a DuckDB secret, shown redacted.
    A SQLite file is lent to the connection while it lives (`selectit.store.sqlite_locks`): run
    none of its statements inside a SQLAlchemy transaction on the same store.
    """
    url = make_url(db.resolve_url(db_url))
    con = duckdb.connect(
        config={
            "autoinstall_known_extensions": False,  # never download anything
            "autoload_known_extensions": False,
            "allow_unredacted_secrets": False,
        }
    )
    try:
        con.execute("SET enable_progress_bar = false")  # a session option: not allowed in config
        if url.get_backend_name() == "sqlite":
            path = db.sqlite_file(db_url)
            if path is None or not path.is_file():
                raise FusionError(f"no SQLite database at {str(path)!r}; create it with `selectit init`")
            con.execute(f"LOAD {sql_str(str(extension_path('sqlite')))}")
            # DuckDB's SQLite and SQLAlchemy's must not both have the file open in this process.
            sqlite_locks.lend_to_duckdb(path, con, _end_result)
            try:
                con.execute(f"ATTACH {sql_str(str(path.resolve()))} AS store (TYPE sqlite, READ_ONLY)")
            except duckdb.Error as exc:
                raise FusionError(f"cannot read the SQLite database {str(path)!r}: {one_line(exc)}") from exc
        elif url.get_backend_name() == "postgresql":
            con.execute(f"LOAD {sql_str(str(extension_path('postgres')))}")
            parts = libpq_parts(url)
            hidden = {k: v for k, v in parts.items() if k in _SECRET_KEYS or db.is_secret_key(k)}
            # DuckDB hands every key of the secret to libpq and shows them redacted.
            secret = ", ".join(f"{_SECRET_KEYS.get(k, k.upper())} {sql_str(v)}" for k, v in hidden.items())
            # Not secret, so visible in duckdb_databases(): how long to wait, and a session whose
            # transactions are read-only even after a COMMIT (the role is the real guarantee).
            # The URL's own `options` come first: the last `-c` of a setting wins, so read-only does.
            visible = {"connect_timeout": str(db.connect_timeout()), "application_name": "selectit-fusion"}
            visible.update({k: v for k, v in parts.items() if k not in hidden})
            visible["options"] = " ".join(filter(None, [parts.get("options", ""), _READ_ONLY_OPTIONS]))
            con.execute(f"CREATE TEMPORARY SECRET selectit_store (TYPE postgres, {secret})")
            try:
                con.execute(f"ATTACH {sql_str(libpq(visible))} AS store "
                            f"(TYPE postgres, SECRET selectit_store, READ_ONLY)")
                read_only = con.execute(
                    "SELECT * FROM postgres_query('store', 'SELECT current_setting(''default_transaction_read_only'')')"
                ).fetchone()[0]
            except duckdb.Error as exc:
                raise FusionError(f"cannot attach {db.shown_url(url)}: {one_line(exc)}") from exc
            if read_only != "on":
                raise FusionError(f"the session on {db.shown_url(url)} is not read-only "
                                  f"(default_transaction_read_only = {read_only}); check the URL's options=")
        else:
            raise FusionError(f"DuckDB cannot read a {url.get_backend_name()} database; use SQLite or PostgreSQL")
        con.execute("SET enable_external_access = false")
    except BaseException:
        con.close()
        raise
    return con


def dataset_id(con: duckdb.DuckDBPyConnection, dataset: str) -> int:
    """The id of the dataset named `dataset` (in NFC, as stored), or an error listing the names."""
    dataset = valid_name(dataset, "dataset")
    row = con.execute(f"SELECT id FROM store.datasets WHERE name = {sql_str(dataset)}").fetchone()
    if row is None:
        names = [r[0] for r in con.execute("SELECT name FROM store.datasets ORDER BY name").fetchall()]
        raise NoSuchDataset.named(dataset, names)
    return int(row[0])
