"""Ingest instruction data into the curation store: read (`selectit.io.readers`) → hash → bulk insert.

`ingest_file` = the pure parse step (`readers.RecordReader`: format detection, validation,
canonical text) + the write step here (content hash, de-duplication, dialect-specific bulk
insert). Formats and the canonical form are described in `selectit.io.readers` and `selectit.io.records`.

Canonical content hash (`content_hash`): each of instruction, input, output is put in canonical
form (``\\r\\n`` → ``\\n``, then Unicode NFC); the hash is the sha256 hex digest of the UTF-8 bytes
``len(i):i len(n):n len(o):o`` — each field preceded by its UTF-8 byte length in ASCII decimal and a
colon, with nothing between fields — so no field content can shift a boundary. The canonical text
is what is stored.

One file is one transaction: any error rolls back everything from that file (with
``skip_invalid`` the invalid records are left out and reported instead).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from selectit.contract import valid_name
from selectit.errors import SelectitError
from selectit.io.readers import (  # noqa: F401 - re-exported: the ingest interface
    FORMATS,
    MAX_ORIGINAL_ID,
    IngestError,
    InvalidRecord,
    Progress,
    Record,
    RecordReader,
    detect_format,
    parse_column_map,
)
from selectit.io.records import canonical, content_hash, render_conversation  # noqa: F401 - re-exported
from selectit.io.records import digest as _digest
from selectit.io.records import QUIRKS
from selectit.store import db, signatures
from selectit.store.db import is_postgres
from selectit.store.schema import Dataset, Ingest, utcnow

if TYPE_CHECKING:
    import pyarrow as pa

#: Records written per round trip (SQLite executemany); bounded memory for any file size.
CHUNK = 20_000
#: How many invalid records `IngestResult.invalid_report` lists before summarising the rest.
LIST_INVALID = 20
#: How many records a quirk warning names.
LIST_QUIRKS = 5

SKIP_HINT = "Nothing was ingested; fix the record, or try --skip-invalid to ingest only the valid records."


# ---------------------------------------------------------------------------------------- hashing


# ---------------------------------------------------------------------------------------- results


@dataclass
class IngestResult:
    dataset: str
    path: str
    format: str
    read: int = 0  # records read (valid or not)
    new: int = 0  # records added to the dataset
    duplicates: int = 0  # records already in the dataset (from before, or earlier in the file)
    new_samples: int = 0  # of `new`, contents not stored before (the rest reuse other datasets' rows)
    invalid: list[InvalidRecord] = field(default_factory=list)
    trailing: int = 0  # valid records whose turns after the last assistant turn were not rated
    first_trailing: int | None = None  # the record number of the first of them
    signatures: int = 0  # near-duplicate signature cells computed (the new samples' only)
    #: rule of `selectit.io.records.QUIRKS` → the valid records that have it (their ids, else numbers)
    quirks: dict[str, list[str]] = field(default_factory=dict)

    @property
    def quirk_warnings(self) -> list[str]:
        """One line per quirk rule some records have, naming the first few of them."""
        lines = []
        for rule, records in self.quirks.items():
            named = ", ".join(records[:LIST_QUIRKS]) + (", …" if len(records) > LIST_QUIRKS else "")
            lines.append(f"{len(records)} of {self.read} records {QUIRKS[rule]} ({rule}: {named})")
        return lines

    @property
    def warning(self) -> str | None:
        """One line when conversations end with turns after the last assistant turn (else None)."""
        if not self.trailing:
            return None
        return (f"{self.trailing} of {self.read} records end with turns after the last assistant turn (first: "
                f"record {self.first_trailing}); those turns are not rated and converted exports leave them out "
                f"(`export --format original` keeps them)")

    @property
    def summary(self) -> str:
        line = (f"{self.dataset}: read {self.read}, new {self.new}, duplicates {self.duplicates}, "
                f"invalid {len(self.invalid)}")
        if self.new_samples < self.new:  # "new" is new in this dataset: say what the store already had
            line += (f"; of the {self.new} new in this dataset, already stored for another dataset (and "
                     f"scored once): {self.new - self.new_samples}, new samples: {self.new_samples}")
        return line

    def invalid_report(self, limit: int = LIST_INVALID) -> list[str]:
        """Lines listing the first `limit` invalid records, then how many more there are."""
        lines = [f"  {rec}" for rec in self.invalid[:limit]]
        if len(self.invalid) > limit:
            lines.append(f"  … and {len(self.invalid) - limit} more invalid records")
        return lines



# ---------------------------------------------------------------------------------------- writing


#: (position, content hash, instruction, input, output, n_chars, original id, original record,
#: turns as JSON text or None, rated turns)
Row = tuple[int, str, str, str, str, int, "str | None", "str | None", "str | None", int]


class _Writer:
    """Writes one file's rows inside the caller's transaction; counts new samples and memberships."""

    def __init__(self, conn: Connection, dataset_id: int, ingest_id: int) -> None:
        self.conn = conn
        self.dataset_id = dataset_id
        self.ingest_id = ingest_id
        self.raw = conn.connection.driver_connection
        self.new_samples = 0
        self.new_members = 0

    def write(self, rows: list[Row]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass


class _SqliteWriter(_Writer):
    """executemany INSERT … ON CONFLICT DO NOTHING per chunk; the hash → id map is an index lookup."""

    def __init__(self, conn: Connection, dataset_id: int, ingest_id: int) -> None:
        super().__init__(conn, dataset_id, ingest_id)
        self.cur = self.raw.cursor()
        # A large page cache keeps the content_hash index in memory during a big ingest.
        self.old_cache = self.cur.execute("PRAGMA cache_size").fetchone()[0]
        self.cur.execute("PRAGMA cache_size=-262144")  # 256 MiB

    def write(self, rows: list[Row]) -> None:
        cur = self.cur
        cur.executemany(
            "INSERT INTO samples (content_hash, instruction, input, output, n_chars, turns, n_turns) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (content_hash) DO NOTHING",
            [(h, i, n, o, c, t, nt) for _, h, i, n, o, c, _, _, t, nt in rows],
        )
        self.new_samples += max(cur.rowcount, 0)
        cur.executemany(
            "INSERT INTO dataset_samples (dataset_id, sample_id, position, original_id, ingest_id, original) "
            "SELECT ?, id, ?, ?, ?, ? FROM samples WHERE content_hash = ? "
            "ON CONFLICT (dataset_id, sample_id) DO NOTHING",
            [(self.dataset_id, p, orig, self.ingest_id, record, h) for p, h, _, _, _, _, orig, record, _, _ in rows],
        )
        self.new_members += max(cur.rowcount, 0)

    def finish(self) -> None:
        self.cur.execute(f"PRAGMA cache_size={int(self.old_cache)}")
        self.cur.close()


class _PostgresWriter(_Writer):
    """Per chunk: look the hashes up (= ANY), COPY only the new contents (binary, psycopg 3) into a
    temp table and INSERT … SELECT … ON CONFLICT DO NOTHING RETURNING their ids, then COPY the
    memberships into a second temp table and INSERT them ON CONFLICT DO NOTHING. Re-ingesting
    sends no text at all."""

    def __init__(self, conn: Connection, dataset_id: int, ingest_id: int) -> None:
        super().__init__(conn, dataset_id, ingest_id)
        self.cur = self.raw.cursor()
        self.cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _selectit_ingest (content_hash text, instruction text, "
            "input text, output text, n_chars integer, turns text, n_turns integer) ON COMMIT DROP"
        )
        self.cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _selectit_members (sample_id integer, position integer, "
            "original_id text, original text) ON COMMIT DROP"
        )
        self.cur.execute("TRUNCATE _selectit_ingest, _selectit_members")

    def _lookup(self, hashes: list[str]) -> dict[str, int]:
        self.cur.execute("SELECT content_hash, id FROM samples WHERE content_hash = ANY(%s)", (hashes,))
        return dict(self.cur.fetchall())

    def write(self, rows: list[Row]) -> None:
        cur = self.cur
        ids = self._lookup([r[1] for r in rows])
        new = [r for r in rows if r[1] not in ids]
        if new:
            with cur.copy("COPY _selectit_ingest (content_hash, instruction, input, output, n_chars, turns, "
                          "n_turns) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "text", "text", "text", "int4", "text", "int4"])
                for _, h, i, n, o, c, _, _, t, nt in new:
                    copy.write_row((h, i, n, o, c, t, nt))
            cur.execute(
                "INSERT INTO samples (content_hash, instruction, input, output, n_chars, turns, n_turns) "
                "SELECT content_hash, instruction, input, output, n_chars, CAST(turns AS json), n_turns "
                "FROM _selectit_ingest "
                "ON CONFLICT (content_hash) DO NOTHING RETURNING content_hash, id"
            )
            inserted = dict(cur.fetchall())
            self.new_samples += len(inserted)
            ids.update(inserted)
            cur.execute("TRUNCATE _selectit_ingest")
            late = [r[1] for r in new if r[1] not in ids]
            if late:  # stored meanwhile by a concurrent ingest (it waited for that commit)
                ids.update(self._lookup(late))
        with cur.copy("COPY _selectit_members (sample_id, position, original_id, original) "
                      "FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "int4", "text", "text"])
            for pos, h, *_, orig, record, _, _ in rows:
                copy.write_row((ids[h], pos, orig, record))
        cur.execute(
            "INSERT INTO dataset_samples (dataset_id, sample_id, position, original_id, ingest_id, original) "
            "SELECT %s, sample_id, position, original_id, %s, original FROM _selectit_members "
            "ON CONFLICT (dataset_id, sample_id) DO NOTHING",
            (self.dataset_id, self.ingest_id),
        )
        self.new_members += max(cur.rowcount, 0)
        cur.execute("TRUNCATE _selectit_members")

    def finish(self) -> None:
        self.cur.close()


def _dataset_id(conn: Connection, name: str, source: str) -> tuple[int, int]:
    """(dataset id, next free position), creating the dataset; locks it against a concurrent ingest."""
    table = Dataset.__table__
    found = conn.execute(sa.select(table.c.id).where(table.c.name == name)).scalar()
    if found is None:
        # Two ingests may create the same new dataset at once: the second waits for the first's
        # commit (the unique name), then does nothing and reads the row the first created.
        insert = (postgresql.insert if is_postgres(conn.engine) else sqlite.insert)(table)
        conn.execute(insert.values(name=name, source=source, created_at=utcnow())
                     .on_conflict_do_nothing(index_elements=[table.c.name]))
        found = conn.execute(sa.select(table.c.id).where(table.c.name == name)).scalar_one()
    if is_postgres(conn.engine):  # SQLite holds the whole database with BEGIN IMMEDIATE
        conn.execute(sa.text("SELECT id FROM datasets WHERE id = :id FOR UPDATE"), {"id": found})
    nxt = conn.execute(
        sa.text("SELECT COALESCE(MAX(position) + 1, 0) FROM dataset_samples WHERE dataset_id = :id"),
        {"id": found},
    ).scalar_one()
    return int(found), int(nxt)


# ---------------------------------------------------------------------------------------- ingest


def ingest_file(
    engine: Engine,
    path: str | Path,
    dataset: str,
    *,
    fmt: str | None = None,
    skip_invalid: bool = False,
    progress: Progress | None = None,
    limit: int | None = None,
    column_map: dict[str, str] | str | None = None,
    split: str | None = None,
    source: str | None = None,
) -> IngestResult:
    """Ingest one file (`-`: standard input) into `dataset` (created if new), in ONE transaction.

    Each valid record becomes a sample (stored once per distinct content hash, shared across
    datasets) and a membership at position = (dataset's next free position before this file) +
    (record number − 1), for its first occurrence only. Re-ingesting a file adds nothing.
    Raises IngestError (nothing committed) on an unreadable file or, unless `skip_invalid`, on
    the first invalid record; with `skip_invalid`, invalid records are returned in `.invalid`.
    `limit` reads only the file's first `limit` records. `column_map` names the file's columns for
    selectit's fields ({"instruction": "question", …} or "instruction=question,…"); `split` picks a
    split of a saved DatasetDict directory or Hub dataset. A `path` that names no file but reads
    like ``owner/name`` is a Hugging Face Hub dataset, read from the local cache only (the
    ingest record names the id; `source` names a table ingested from memory). Each membership keeps its record's original and the
    file (an `ingests` row: path, sha256, format, layout), for `export --format original`.
    """
    dataset = valid_name(dataset, "dataset")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise IngestError(f"limit must be a whole number of records >= 1, not {limit!r}")
    if str(path) == STDIN:
        with _stdin_copy() as copy:
            return ingest_file(engine, copy, dataset, fmt=fmt, skip_invalid=skip_invalid, progress=progress,
                               limit=limit, column_map=column_map, split=split, source=STDIN_SOURCE)
    records = RecordReader(path, fmt, limit=limit, progress=progress, column_map=column_map,
                           split=split)  # the parse step: no database
    path = source or records.source  # the file, the Hub dataset id, or what the caller names (a table in memory)
    sha256, size = file_digest(records.local)
    result = IngestResult(dataset=dataset, path=str(path), format=records.format)
    seen: set[str] = set()
    with engine.begin() as conn:
        dataset_id, offset = _dataset_id(conn, dataset, path)
        ingest_id = conn.execute(sa.insert(Ingest).values(
            dataset_id=dataset_id, path=path, sha256=sha256, size=size, format=records.format,
            container=records.container, layout={}, column_map=records.column_map or None, split=split,
            n_read=0, n_new=0, created_at=utcnow()).returning(Ingest.id)).scalar_one()
        writer = (_PostgresWriter if is_postgres(engine) else _SqliteWriter)(conn, dataset_id, ingest_id)
        rows: list[Row] = []
        try:
            for rec in records:
                if isinstance(rec, InvalidRecord):
                    if not skip_invalid:
                        hint = SKIP_HINT.replace("the record", "the line") if rec.unparsed else SKIP_HINT
                        where = f"line {rec.line}" if rec.unparsed and rec.line else rec.where
                        raise IngestError(f"{path}, {where}: {rec.reason}. {hint}")
                    result.invalid.append(rec)
                    continue
                for rule in rec.quirks:
                    result.quirks.setdefault(rule, []).append(rec.original_id or f"record {rec.number}")
                if rec.trailing:
                    result.trailing += 1
                    result.first_trailing = result.first_trailing or rec.number
                digest = _digest(rec.instruction, rec.input, rec.output)
                if digest in seen:
                    continue
                seen.add(digest)
                rows.append((offset + rec.number - 1, digest, rec.instruction, rec.input, rec.output,
                             len(rec.instruction) + len(rec.input) + len(rec.output), rec.original_id,
                             rec.original, rec.turns, rec.n_turns))
                if len(rows) >= CHUNK:
                    writer.write(rows)
                    rows = []
            if rows:
                writer.write(rows)
        finally:
            writer.finish()
        result.read = records.read
        result.format = records.format
        result.new = writer.new_members
        result.new_samples = writer.new_samples
        result.duplicates = result.read - len(result.invalid) - result.new
        conn.execute(sa.update(Ingest).where(Ingest.id == ingest_id).values(
            format=records.format, layout=records.layout, n_read=result.read, n_new=result.new))
    # After the commit: cheap cells of the samples that have none yet (docs/dedup.md).
    result.signatures = signatures.fill(engine, dataset_id=dataset_id)
    return result


#: The path that means standard input, and what the ingest record names then.
STDIN = "-"
STDIN_SOURCE = "<stdin>"


@contextmanager
def _stdin_copy() -> Iterator[Path]:
    """Standard input copied to a private temporary file (read twice: format detection, records)."""
    import shutil
    import sys
    import tempfile

    with tempfile.TemporaryDirectory(prefix="selectit-stdin-") as tmp:
        copy = Path(tmp) / "stdin"
        with open(copy, "wb") as out:
            shutil.copyfileobj(sys.stdin.buffer, out)
        yield copy


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, bytes) of a file, or of a directory's files (names and contents, in name order)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    size = 0
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    return h.hexdigest(), size


# ---------------------------------------------------------------------------------------- listing


def dataset_rows(engine: Engine) -> list[tuple[str, int, str, str | None]]:
    """(name, samples, created, source) for every dataset, by name."""
    with db.reading(engine).connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT d.name, COUNT(m.sample_id), d.created_at, d.source FROM datasets d "
            "LEFT JOIN dataset_samples m ON m.dataset_id = d.id "
            "GROUP BY d.id, d.name, d.created_at, d.source ORDER BY d.name"
        )).all()
    return [(name, int(n), _when(created), source) for name, n, created, source in rows]


def sample_counts(engine: Engine) -> tuple[list[tuple[str, int]], int]:
    """([(dataset, samples)], total distinct samples stored)."""
    with db.reading(engine).connect() as conn:
        per = conn.execute(sa.text(
            "SELECT d.name, COUNT(m.sample_id) FROM datasets d "
            "LEFT JOIN dataset_samples m ON m.dataset_id = d.id GROUP BY d.id, d.name ORDER BY d.name"
        )).all()
        total = conn.execute(sa.text("SELECT COUNT(*) FROM samples")).scalar_one()
    return [(name, int(n)) for name, n in per], int(total)


def _when(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):  # SQLite server default: 'YYYY-MM-DD HH:MM:SS'
        return value[:19]
    return value.strftime("%Y-%m-%d %H:%M:%S")


def ingest(engine: Engine, data: Any, dataset: str, **options: Any) -> IngestResult:
    """`ingest_file` of a path, or of a table in memory (a ``pyarrow.Table``, a pandas
    ``DataFrame`` or a ``datasets.Dataset``) through a Parquet file that lives as long as the ingest:
    the reader's one path for tables."""
    source = f"<in-memory {type(data).__name__}>"  # what the ingest record and the errors name
    table = _as_arrow(data, source)
    if table is None:
        return ingest_file(engine, data, dataset, **options)
    import tempfile

    import pyarrow.parquet as pq

    if options.pop("split", None) is not None:
        raise SelectitError("split names a split of a Hub dataset or a saved DatasetDict; a table in memory "
                            "has none: select it before ingesting (e.g. dataset_dict['train'])")
    with tempfile.TemporaryDirectory(prefix="selectit-ingest-") as tmp:
        path = Path(tmp) / "records.parquet"
        pq.write_table(table, path)
        try:
            return ingest_file(engine, path, dataset, **{**options, "fmt": "parquet"}, source=source)
        except IngestError as exc:  # about the temporary file: told of the table instead
            raise IngestError(_of_table(str(exc), str(path), source)) from None


#: What an ingest error says of a file, and what it says of a table in memory instead (a table
#: has no file to convert or check, and no format to pass).
_TABLE_WORDS = (
    (re.compile(r": unknown format \("), ": no columns selectit reads ("),
    (re.compile(r"selectit reads [^;]*; convert the file, or pass --format if detection got it wrong"),
     "rename the table's columns, or map them with --map"),
    (re.compile(r"check the file(, or pass --format)?"), "check the table"),
    (re.compile("give a file with at least one record"), "give a table with at least one row"),
    (re.compile("the file does not have"), "the table does not have"),
)


def _of_table(message: str, path: str, source: str) -> str:
    """An ingest error about the temporary Parquet file of a table, as said of the table."""
    message = message.replace(path, source)
    for words, instead in _TABLE_WORDS:
        message = words.sub(instead, message)
    return message


def _as_arrow(data: Any, source: str) -> pa.Table | None:
    """`data` as a `pyarrow.Table` when it is a table in memory (Arrow, pandas, datasets), else
    None; `IngestError` (naming `source`) for one that Arrow cannot hold or whose columns repeat."""
    if isinstance(data, (str, os.PathLike)):
        return None
    import pyarrow as pa

    # By package and class name: neither pandas nor datasets is imported unless the caller did.
    kind = f"{type(data).__module__.partition('.')[0]}.{type(data).__name__}"
    if kind not in ("pyarrow.Table", "pandas.DataFrame", "datasets.Dataset"):
        raise SelectitError(f"cannot ingest a {kind}: give a path, a pyarrow.Table, a pandas DataFrame "
                            f"or a datasets.Dataset")
    names = [str(c) for c in (data.columns if kind == "pandas.DataFrame" else data.column_names)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # one of the two would be read and the other dropped (pandas: a bare ValueError)
        raise IngestError(f"{source} has more than one column named {', '.join(map(repr, twice))}. "
                          f"Nothing was ingested; rename or drop the repeated columns.")
    try:
        if kind == "pandas.DataFrame":
            return pa.Table.from_pandas(data, preserve_index=False)
        return data if kind == "pyarrow.Table" else data.with_format("arrow")[:]
    except (pa.ArrowException, ValueError, TypeError) as exc:  # a column of mixed types, say
        reason = " ".join("; ".join(map(str, exc.args)).split()) or type(exc).__name__  # Arrow's args: a tuple
        raise IngestError(f"{source}: cannot read it as a table ({reason}). Nothing was ingested; give each "
                          f"column one type (text for instruction, input and output).") from None
