"""One copy of SQLite at a time on a store file, in each process.

Python's `sqlite3` (under SQLAlchemy) and DuckDB's `sqlite` extension each bring their own copy of
SQLite, and POSIX advisory locks belong to the process, not to the copy that took them: when
DuckDB's copy closes the store after a statement, the kernel drops every lock this process holds
on it, those of an idle pooled SQLAlchemy connection too (its shared lock on the database, its
claim on the `-shm`). Another process then takes the store for unused: it truncates the `-shm`
still mapped here (SIGBUS at this process's next read or write), or rebuilds the WAL index beside
it ("locking protocol"). The same holds the other way round.

So, in a process: while a DuckDB connection that reads a store file is alive (`lend_to_duckdb`),
the SQLAlchemy engines on that file keep no connection in the pool (each is closed as it is handed
back), DuckDB lets go of the file before they open one (DuckDB keeps its SQLite handles only while
a result is not read to the end: the next statement closes them), and the file is lent only while
none of their connections is in use. What is left to the callers is one rule: run no DuckDB
statement on the store inside a SQLAlchemy transaction (read, close the transaction, then write),
and use neither library on one store from two threads at once.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from selectit.errors import SelectitError

_lock = threading.Lock()
#: Per store file (its real path): the SQLAlchemy engines on it, and the DuckDB connections lent
#: it, each with the function that makes it close its SQLite handles.
_engines: defaultdict[str, weakref.WeakSet[Engine]] = defaultdict(weakref.WeakSet)
_borrowers: defaultdict[str, weakref.WeakKeyDictionary[Any, Callable[[Any], None]]] = defaultdict(
    weakref.WeakKeyDictionary)


def _key(path: str | os.PathLike[str]) -> str:
    return os.path.realpath(path)  # one file reached through a symlink or a relative path is one file


def _borrowers_let_go(key: str) -> None:
    for con, let_go in list(_borrowers[key].items()):
        let_go(con)


def track(engine: Engine, path: str | os.PathLike[str]) -> None:
    """Have `engine` (on the SQLite file `path`) keep no connection open beside DuckDB's."""
    key = _key(path)
    with _lock:
        _engines[key].add(engine)

    @sa.event.listens_for(engine, "connect", insert=True)
    def _duckdb_lets_go_first(_dbapi_conn: Any, _record: Any) -> None:
        # The new connection has opened the file but taken no lock yet: DuckDB closing its
        # handles now drops nothing of ours.
        _borrowers_let_go(key)

    @sa.event.listens_for(engine, "checkin")
    def _close_while_lent(dbapi_conn: Any, record: Any) -> None:
        # A pooled connection's locks would be dropped by DuckDB's next statement: close it now
        # (the pool opens a new one at the next checkout), after DuckDB's handles, whose locks
        # our close would drop.
        if dbapi_conn is not None and len(_borrowers[key]):
            _borrowers_let_go(key)
            record.invalidate()


def lend_to_duckdb(path: Path, con: Any, let_go: Callable[[Any], None]) -> None:
    """Lend the store file `path` to the DuckDB connection `con` for as long as `con` lives;
    `let_go(con)` must make it close its SQLite handles (end its pending result).

    Call it before DuckDB first opens the file. The engines on it close their idle connections now
    and every connection they hand back from now on until `con` is gone; a `SelectitError` if one
    of their connections is in use (a transaction open in this process, e.g. in another thread).
    """
    key = _key(path)
    with _lock:
        engines = list(_engines[key])
        busy = sum(e.pool.checkedout() for e in engines if hasattr(e.pool, "checkedout"))
        if busy:
            raise SelectitError(
                f"DuckDB cannot read {path} while this process holds {busy} SQLAlchemy connection(s) on it: two "
                f"copies of SQLite in one process drop each other's locks; finish the transaction first")
        _borrowers[key][con] = let_go
        for engine in engines:
            engine.dispose()  # close the idle pooled connections before DuckDB opens the file
