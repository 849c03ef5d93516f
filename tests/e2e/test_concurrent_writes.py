"""Many processes write one SQLite store at once (WAL): select, rank, export, ingest and status mixed.

Each process runs its own loop of CLI commands in process (as a shell loop of `selectit` would,
without paying the interpreter's start-up every time). No process may die of a signal (the SIGBUS
of a `-shm` truncated under its mapping), no command may fail ("locking protocol", "database is
locked": writers queue on the busy timeout), and the file passes `PRAGMA integrity_check` with
every selection complete.

Run as a script, this file is one of those processes:
    python tests/e2e/test_concurrent_writes.py DB_URL WORKER ROUNDS DATA_FILE OUT_DIR
"""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import sqlalchemy as sa

#: Processes, and commands each runs: enough that a process whose SQLite locks were dropped is hit.
WORKERS, ROUNDS = 6, 10
#: Every command of the mix, in the order worker 0 runs them (worker i starts i further on).
COMMANDS = ("select", "rank", "export", "ingest", "status")


def _args(command: str, worker: int, round_: int, data: str, out: str) -> list[str]:
    name = f"w{worker}-r{round_}"
    if command == "select":
        return ["select", name, "--dataset", "d", "--prompt-set", "s", "--top", "0.5"]
    if command == "rank":
        return ["rank", "--dataset", "d", "--prompt-set", "s"]
    if command == "export":  # the current top: DuckDB, then the texts through SQLAlchemy
        return ["export", "--dataset", "d", "--prompt-set", "s", "--with-scores", "--out", f"{out}/{name}.jsonl"]
    if command == "ingest":
        return ["ingest", data, "--dataset", f"n-{name}"]
    return ["status"]


def worker(url: str, index: int, rounds: int, data: str, out: str) -> int:
    """Run `rounds` commands of the mix on `url` in this process; 1 if any failed (each is printed)."""
    import faulthandler

    from selectit.cli import main

    faulthandler.enable()  # a fatal signal prints where it struck
    failed = 0
    for r in range(rounds):
        args = _args(COMMANDS[(index + r) % len(COMMANDS)], index, r, data, out)
        print(f"running {' '.join(args)}", flush=True)
        buffer = io.StringIO()
        try:
            with redirect_stdout(buffer), redirect_stderr(buffer):
                main.main(["--db", url, *args], prog_name="selectit", standalone_mode=False)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # noqa: BLE001 - reported with the command, then the next one runs
            code, _ = 1, buffer.write(f"{type(exc).__name__}: {exc}")
        if code:
            failed += 1
            print(f"FAILED {' '.join(args)}: {buffer.getvalue().strip()}", flush=True)
    return 1 if failed else 0


def _descriptors_on(path: Path) -> int:
    """How many of this process's file descriptors are open on the store (database, WAL, -shm)."""
    names = {str(p.resolve()) for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm"))}
    fds = Path("/proc/self/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += str(fd.readlink()) in names
        except OSError:  # closed meanwhile (the listing's own descriptor)
            pass
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_duckdb_reads_the_file_only_while_sqlalchemy_holds_no_connection(sqlite_url: str) -> None:
    """A DuckDB statement closes its SQLite handle, dropping every POSIX lock of this process on
    the file: no SQLAlchemy connection may be open then (`selectit.store.sqlite_locks`)."""
    from selectit.errors import SelectitError
    from selectit.fusion.store_attach import attach
    from selectit.store import db

    path = db.sqlite_file(sqlite_url)
    engine = db.open_store(sqlite_url)
    try:
        assert _descriptors_on(path) > 0  # open_store's check left a pooled connection
        with engine.connect(), pytest.raises(SelectitError, match="finish the transaction first"):
            attach(sqlite_url)  # inside a transaction: refused, not silently unlocked
        con = attach(sqlite_url)
        assert _descriptors_on(path) == 0  # closed before DuckDB opened the file
        assert con.execute("SELECT set_name FROM store.prompts").fetchone() is not None
        assert _descriptors_on(path) > 0  # a result not read to the end keeps DuckDB's handles open
        with db.session_scope(engine) as session:  # DuckDB lets go first; closed when handed back
            session.execute(sa.text("INSERT INTO datasets (name, source) VALUES ('x', 'test')"))
        assert _descriptors_on(path) == 0
        assert con.execute("SELECT count(*) FROM store.datasets").fetchone() == (1,)
        con.close()
        del con  # the lend ends with the DuckDB connection: the pool keeps connections again
        with db.read_scope(engine) as session:
            session.execute(sa.text("SELECT 1"))
        assert _descriptors_on(path) > 0
    finally:
        engine.dispose()


def test_concurrent_writers_on_one_sqlite_store(sqlite_url: str, tmp_path: Path) -> None:
    from test_views import seed

    from selectit.store import db

    engine = db.open_store(sqlite_url)
    seed(engine, {f"s{i}": {"A": ((0.25, 0.125, 0.125 + i / 512),) * 3, "B": ((0.125, 0.25, 0.125),) * 3}
                  for i in range(60)})
    engine.dispose()
    data = tmp_path / "new.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"Say {i}.", "input": "", "output": f"{i}."}) + "\n"
                            for i in range(20)))
    procs = [subprocess.Popen([sys.executable, __file__, sqlite_url, str(i), str(ROUNDS), str(data), str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(WORKERS)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    report = "\n".join(f"worker {i}: exit {p.returncode}\n{out}" for i, (p, out) in enumerate(zip(procs, outputs)))
    assert all(p.returncode >= 0 for p in procs), f"a worker died of a signal:\n{report}"
    assert "locking protocol" not in report, report
    assert all(p.returncode == 0 for p in procs), report

    con = sqlite3.connect(db.sqlite_file(sqlite_url))
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        selections = con.execute("SELECT s.n_selected, count(m.rank) FROM selections s "
                                 "LEFT JOIN selection_samples m ON m.selection_id = s.id GROUP BY s.id").fetchall()
        n_select = sum(COMMANDS[(i + r) % len(COMMANDS)] == "select" for i in range(WORKERS) for r in range(ROUNDS))
        assert len(selections) == n_select and all(n == kept == 30 for n, kept in selections), selections
        n_ingest = sum(COMMANDS[(i + r) % len(COMMANDS)] == "ingest" for i in range(WORKERS) for r in range(ROUNDS))
        assert con.execute("SELECT count(*) FROM datasets WHERE name LIKE 'n-%'").fetchone()[0] == n_ingest
    finally:
        con.close()


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]))
