"""Ingest instruction data into the curation store: parse → validate → canonical hash → bulk insert.

Formats (detected from the extension and the first record, or forced with `fmt`):

- ``alpaca-json``: a JSON list of ``{"instruction", "input", "output"}`` objects;
- ``jsonl``: one such object per line;
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": …}, …]}``
  records (optionally with a top-level ``system`` string), as a JSON list or JSONL;
- ``messages``: OpenAI-style ``{"messages": [{"role": "system"|"user"|"assistant", "content": …}]}``
  records, as a JSON list or JSONL;
- ``parquet``: columns ``instruction``/``input``/``output``, or ``conversations``, or ``messages``.

Multi-turn rendering: the *last* assistant turn is the response (``output``); the turns before it
become the ``instruction``, one turn per line as ``"<Role>: <text>"`` with Role ∈ System, User,
Assistant, Tool, joined by ``"\\n"`` (a ShareGPT top-level ``system`` comes first). A context of one
single user turn becomes the instruction as is. ``input`` is empty; turns after the last assistant
turn are dropped.

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
import json
import itertools
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from selectit.db import is_postgres
from selectit.errors import SelectitError
from selectit.schema import Dataset, utcnow

FORMATS = ("alpaca-json", "jsonl", "sharegpt", "messages", "parquet")
#: Records written per round trip (SQLite executemany); bounded memory for any file size.
CHUNK = 20_000
#: dataset_samples.original_id is VARCHAR(200).
MAX_ORIGINAL_ID = 200
#: How many invalid records `IngestResult.invalid_report` lists before summarising the rest.
LIST_INVALID = 20

SKIP_HINT = "Nothing was ingested; fix the record, or try --skip-invalid to ingest only the valid records."

_SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "observation": "tool", "function_call": "assistant",
}
_MESSAGE_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                  "tool": "tool", "function": "tool"}
_ROLE_LABEL = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


class IngestError(SelectitError):
    """The file cannot be ingested; nothing from it was committed."""


class _Invalid(Exception):
    """One record is invalid (skippable with skip_invalid); the message is the reason."""


# ---------------------------------------------------------------------------------------- hashing


def canonical(text: str) -> str:
    """The canonical form of one field: ``\\r\\n`` → ``\\n``, then Unicode NFC."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    # ASCII is always NFC; the test saves a normalisation pass on most records.
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def _digest(instruction: str, input: str, output: str) -> str:
    """content_hash of fields already in canonical form."""
    i, n, o = instruction.encode(), input.encode(), output.encode()
    return hashlib.sha256(b"%d:%s%d:%s%d:%s" % (len(i), i, len(n), n, len(o), o)).hexdigest()


def _checked_digest(instruction: str, input: str, output: str) -> str:
    """_digest, refusing text no backend can store (PostgreSQL text cannot hold NUL)."""
    for name, text in (("instruction", instruction), ("input", input), ("output", output)):
        if "\x00" in text:
            raise _Invalid(f"field '{name}' contains a NUL character")
    try:
        return _digest(instruction, input, output)
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON \ud800 escape
        raise _Invalid(f"text contains an unpaired surrogate ({exc.object[exc.start]!a})") from None


def content_hash(instruction: str, input: str, output: str) -> str:
    """sha256 hex of the canonical fields, each preceded by its UTF-8 byte length and ``:``.

    >>> content_hash("Hi", "", "Line\\r\\n") == content_hash("Hi", "", "Line\\n")
    True
    """
    return _digest(canonical(instruction), canonical(input), canonical(output))


# ---------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class InvalidRecord:
    record: int  # 1-based record number in the file
    line: int | None  # 1-based line (JSONL), when known
    reason: str

    @property
    def where(self) -> str:
        return f"record {self.record}" + (f" (line {self.line})" if self.line is not None else "")

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


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

    @property
    def summary(self) -> str:
        return (f"{self.dataset}: read {self.read}, new {self.new}, duplicates {self.duplicates}, "
                f"invalid {len(self.invalid)}")

    def invalid_report(self, limit: int = LIST_INVALID) -> list[str]:
        """Lines listing the first `limit` invalid records, then how many more there are."""
        lines = [f"  {rec}" for rec in self.invalid[:limit]]
        if len(self.invalid) > limit:
            lines.append(f"  … and {len(self.invalid) - limit} more invalid records")
        return lines


#: progress(records_read, units_done, units_total): units are bytes (JSON) or rows (Parquet).
Progress = Callable[[int, int, int], None]


# ---------------------------------------------------------------------------------------- reading


@dataclass
class _Raw:
    record: int
    line: int | None
    obj: Any = None
    error: str | None = None  # set: the record could not even be parsed (skippable)


def _decode_error(path: Path, data: bytes, base: int, exc: UnicodeDecodeError, line: int) -> IngestError:
    offset = base + exc.start
    return IngestError(
        f"{path}: not valid UTF-8 at byte {offset} (line {line}, byte 0x{data[exc.start]:02x}). "
        f"Nothing was ingested; re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name} "
        f"> fixed.json`) and ingest that."
    )


def _first_byte(path: Path) -> bytes:
    with path.open("rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    return head.lstrip()[:1]


def _iter_json_list(path: Path, progress: Callable[[int, int], None]) -> Iterator[_Raw]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _decode_error(path, data, 0, exc, data.count(b"\n", 0, exc.start) + 1) from None
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IngestError(
            f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg}). Nothing was "
            f"ingested; fix the file (a JSON list cannot be read past a syntax error), or convert it to JSONL "
            f"and use --skip-invalid."
        ) from None
    if not isinstance(items, list):
        raise IngestError(f"{path}: expected a JSON list of records, got a JSON {type(items).__name__}. "
                          f"Nothing was ingested; wrap the records in [ … ] or write one per line (JSONL).")
    total = len(items)
    for i, obj in enumerate(items, 1):
        yield _Raw(i, None, obj)
        if i % 1000 == 0 or i == total:  # after the consumer counted record i
            progress(i, total)


def _iter_jsonl(path: Path, progress: Callable[[int, int], None]) -> Iterator[_Raw]:
    total = path.stat().st_size
    offset = 0
    record = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            start = offset
            offset += len(raw)
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
                start += 3
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _decode_error(path, raw, start, exc, lineno) from None
            if not line.strip():
                continue
            record += 1
            try:
                yield _Raw(record, lineno, json.loads(line))
            except json.JSONDecodeError as exc:
                yield _Raw(record, lineno, error=f"invalid JSON ({exc.msg}, column {exc.colno})")
            if record % 1000 == 0:
                progress(offset, total)
    progress(total, total)


def _iter_parquet(path: Path, progress: Callable[[int, int], None]) -> Iterator[_Raw]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    total = pf.metadata.num_rows
    record = 0
    for batch in pf.iter_batches(batch_size=CHUNK):
        for obj in batch.to_pylist():
            record += 1
            yield _Raw(record, None, obj)
        progress(record, total)


# ---------------------------------------------------------------------------------------- records


def _text(obj: dict[str, Any], key: str, *, required: bool) -> str:
    if key not in obj or (obj[key] is None and required):
        if required:
            raise _Invalid(f"missing field '{key}'")
        return ""
    value = obj[key]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _Invalid(f"field '{key}' is not a string (got {type(value).__name__})")
    if required and not value.strip():
        raise _Invalid(f"empty field '{key}'")
    return value


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: keep the text parts
        parts = []
        for part in value:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise _Invalid(f"{where} has non-text content")
        return "".join(parts)
    if value is None:
        return ""
    raise _Invalid(f"{where} is not a string (got {type(value).__name__})")


def render_conversation(turns: list[tuple[str, str]]) -> tuple[str, str]:
    """(instruction, output) of a conversation given as (role, text) pairs, role ∈ system/user/assistant/tool.

    The last assistant turn is the output; the turns before it are the instruction: one single
    user turn as is, otherwise ``"<Role>: <text>"`` lines joined by ``"\\n"``.
    """
    last = max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=None)
    if last is None:
        raise _Invalid("no assistant turn (the last assistant turn is the response)")
    output = turns[last][1]
    if not output.strip():
        raise _Invalid(f"empty response (turn {last + 1}, the last assistant turn)")
    context = turns[:last]
    if not context:
        raise _Invalid("no turn before the last assistant turn (it would be the instruction)")
    if len(context) == 1 and context[0][0] == "user":
        instruction = context[0][1]
    else:
        instruction = "\n".join(f"{_ROLE_LABEL[role]}: {text}" for role, text in context)
    if not instruction.strip():
        raise _Invalid("empty instruction (the turns before the last assistant turn are empty)")
    return instruction, output


def _turns(obj: dict[str, Any], key: str) -> list[tuple[str, str]]:
    if key not in obj or obj[key] is None:
        raise _Invalid(f"missing field '{key}'")
    seq = obj[key]
    if not isinstance(seq, list):
        raise _Invalid(f"field '{key}' is not a list (got {type(seq).__name__})")
    sharegpt = key == "conversations"
    role_key, text_key = ("from", "value") if sharegpt else ("role", "content")
    roles = _SHAREGPT_ROLES if sharegpt else _MESSAGE_ROLES
    turns: list[tuple[str, str]] = []
    if sharegpt and isinstance(obj.get("system"), str) and obj["system"].strip():
        turns.append(("system", obj["system"]))
    for n, turn in enumerate(seq, 1):
        if not isinstance(turn, dict):
            raise _Invalid(f"{key}[{n}] is not an object")
        role = roles.get(str(turn.get(role_key, "")).lower())
        if role is None:
            raise _Invalid(f"{key}[{n}] has unknown {role_key} {turn.get(role_key)!r}")
        turns.append((role, _content(turn.get(text_key), f"{key}[{n}].{text_key}")))
    return turns


def _alpaca(obj: dict[str, Any]) -> tuple[str, str, str]:
    return (_text(obj, "instruction", required=True), _text(obj, "input", required=False),
            _text(obj, "output", required=True))


def _sharegpt(obj: dict[str, Any]) -> tuple[str, str, str]:
    instruction, output = render_conversation(_turns(obj, "conversations"))
    return instruction, "", output


def _messages(obj: dict[str, Any]) -> tuple[str, str, str]:
    instruction, output = render_conversation(_turns(obj, "messages"))
    return instruction, "", output


_SHAPES: dict[str, Callable[[dict[str, Any]], tuple[str, str, str]]] = {
    "alpaca": _alpaca, "sharegpt": _sharegpt, "messages": _messages,
}


def _shape_of(keys: list[str] | set[str]) -> str | None:
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if "instruction" in keys or "output" in keys:
        return "alpaca"
    return None


def _original_id(obj: dict[str, Any]) -> str | None:
    value = obj.get("id")
    if value is None:
        return None
    value = str(value)
    if "\x00" in value:
        raise _Invalid("field 'id' contains a NUL character")
    if len(value) > MAX_ORIGINAL_ID:
        raise _Invalid(f"field 'id' is longer than {MAX_ORIGINAL_ID} characters")
    return value


# ---------------------------------------------------------------------------------------- detection


def _unknown_format(path: Path, why: str) -> IngestError:
    return IngestError(
        f"{path}: unknown format ({why}). Nothing was ingested; selectit reads {', '.join(FORMATS)} "
        f"(see `selectit ingest --help`); convert the file, or pass --format if detection got it wrong."
    )


def detect_format(path: Path) -> tuple[str, str, str]:
    """(format name, container, shape): container ∈ json, jsonl, parquet; shape ∈ alpaca, sharegpt, messages."""
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic == b"PAR1" or path.suffix.lower() in (".parquet", ".pq"):
        return "parquet", "parquet", ""
    first = _first_byte(path)
    if not first:
        raise IngestError(f"{path} is empty. Nothing was ingested; give a file with at least one record.")
    if first == b"[":
        return "alpaca-json", "json", ""
    if first == b"{":
        return "jsonl", "jsonl", ""
    snippet = path.open("rb").read(20)
    raise _unknown_format(path, f"not JSON, JSONL or Parquet; it starts with {snippet!r}")


def _container_for(path: Path, fmt: str) -> str:
    if fmt == "parquet":
        return "parquet"
    if fmt == "alpaca-json":
        return "json"
    if fmt == "jsonl":
        return "jsonl"
    return "json" if _first_byte(path) == b"[" else "jsonl"  # sharegpt / messages: either


# ---------------------------------------------------------------------------------------- writing


class _Writer:
    """Writes one file's rows inside the caller's transaction; counts new samples and memberships."""

    def __init__(self, conn: Connection, dataset_id: int) -> None:
        self.conn = conn
        self.dataset_id = dataset_id
        self.raw = conn.connection.driver_connection
        self.new_samples = 0
        self.new_members = 0

    def write(self, rows: list[tuple[int, str, str, str, str, int, str | None]]) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        pass


class _SqliteWriter(_Writer):
    """executemany INSERT … ON CONFLICT DO NOTHING per chunk; the hash → id map is an index lookup."""

    def __init__(self, conn: Connection, dataset_id: int) -> None:
        super().__init__(conn, dataset_id)
        self.cur = self.raw.cursor()
        # A large page cache keeps the content_hash index in memory during a big ingest.
        self.old_cache = self.cur.execute("PRAGMA cache_size").fetchone()[0]
        self.cur.execute("PRAGMA cache_size=-262144")  # 256 MiB

    def write(self, rows: list[tuple[int, str, str, str, str, int, str | None]]) -> None:
        cur = self.cur
        cur.executemany(
            "INSERT INTO samples (content_hash, instruction, input, output, n_chars) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (content_hash) DO NOTHING",
            [(h, i, n, o, c) for _, h, i, n, o, c, _ in rows],
        )
        self.new_samples += max(cur.rowcount, 0)
        cur.executemany(
            "INSERT INTO dataset_samples (dataset_id, sample_id, position, original_id) "
            "SELECT ?, id, ?, ? FROM samples WHERE content_hash = ? "
            "ON CONFLICT (dataset_id, sample_id) DO NOTHING",
            [(self.dataset_id, p, orig, h) for p, h, _, _, _, _, orig in rows],
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

    def __init__(self, conn: Connection, dataset_id: int) -> None:
        super().__init__(conn, dataset_id)
        self.cur = self.raw.cursor()
        self.cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _selectit_ingest (content_hash text, instruction text, "
            "input text, output text, n_chars integer) ON COMMIT DROP"
        )
        self.cur.execute(
            "CREATE TEMP TABLE IF NOT EXISTS _selectit_members (sample_id integer, position integer, "
            "original_id text) ON COMMIT DROP"
        )
        self.cur.execute("TRUNCATE _selectit_ingest, _selectit_members")

    def _lookup(self, hashes: list[str]) -> dict[str, int]:
        self.cur.execute("SELECT content_hash, id FROM samples WHERE content_hash = ANY(%s)", (hashes,))
        return dict(self.cur.fetchall())

    def write(self, rows: list[tuple[int, str, str, str, str, int, str | None]]) -> None:
        cur = self.cur
        ids = self._lookup([r[1] for r in rows])
        new = [r for r in rows if r[1] not in ids]
        if new:
            with cur.copy("COPY _selectit_ingest (content_hash, instruction, input, output, n_chars) "
                          "FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "text", "text", "text", "int4"])
                for _, h, i, n, o, c, _ in new:
                    copy.write_row((h, i, n, o, c))
            cur.execute(
                "INSERT INTO samples (content_hash, instruction, input, output, n_chars) "
                "SELECT content_hash, instruction, input, output, n_chars FROM _selectit_ingest "
                "ON CONFLICT (content_hash) DO NOTHING RETURNING content_hash, id"
            )
            inserted = dict(cur.fetchall())
            self.new_samples += len(inserted)
            ids.update(inserted)
            cur.execute("TRUNCATE _selectit_ingest")
            late = [r[1] for r in new if r[1] not in ids]
            if late:  # stored meanwhile by a concurrent ingest (it waited for that commit)
                ids.update(self._lookup(late))
        with cur.copy("COPY _selectit_members (sample_id, position, original_id) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "int4", "text"])
            for pos, h, *_, orig in rows:
                copy.write_row((ids[h], pos, orig))
        cur.execute(
            "INSERT INTO dataset_samples (dataset_id, sample_id, position, original_id) "
            "SELECT %s, sample_id, position, original_id FROM _selectit_members "
            "ON CONFLICT (dataset_id, sample_id) DO NOTHING",
            (self.dataset_id,),
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
        found = conn.execute(
            sa.insert(table).values(name=name, source=source, created_at=utcnow()).returning(table.c.id)
        ).scalar_one()
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
) -> IngestResult:
    """Ingest one file into `dataset` (created if new), in ONE transaction.

    Each valid record becomes a sample (stored once per distinct content hash, shared across
    datasets) and a membership at position = (dataset's next free position before this file) +
    (record number − 1), for its first occurrence only. Re-ingesting a file adds nothing.
    Raises IngestError (nothing committed) on an unreadable file or, unless `skip_invalid`, on
    the first invalid record; with `skip_invalid`, invalid records are returned in `.invalid`.
    `limit` reads only the file's first `limit` records.
    """
    path = Path(path)
    if not path.is_file():
        raise IngestError(f"{path}: no such file. Nothing was ingested; check the path.")
    if not dataset or not dataset.strip() or len(dataset) > 200:
        raise IngestError("--dataset must be a non-empty name of at most 200 characters.")
    if fmt is not None and fmt not in FORMATS:
        raise IngestError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)} (or leave "
                          f"--format out to detect it).")
    detected = fmt is None
    if fmt is None:
        fmt, container, _ = detect_format(path)
    else:
        if path.stat().st_size == 0:
            raise IngestError(f"{path} is empty. Nothing was ingested; give a file with at least one record.")
        container = _container_for(path, fmt)
    forced_shape = {"sharegpt": "sharegpt", "messages": "messages", "alpaca-json": "alpaca",
                    "jsonl": "alpaca", "parquet": None}[fmt]

    report: Progress = progress or (lambda *_: None)
    counter = [0]
    tick = lambda done, total: report(counter[0], done, total)  # noqa: E731
    if container == "parquet":
        import pyarrow.parquet as pq

        try:
            names = pq.ParquetFile(path).schema_arrow.names
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
            raise IngestError(f"{path}: cannot read it as Parquet ({exc}). Nothing was ingested; "
                              f"check the file, or pass --format.") from None
        shape = _shape_of(names)
        if shape is None:
            raise _unknown_format(path, f"Parquet columns {names}; expected instruction/input/output, "
                                        f"conversations or messages")
        raws = _iter_parquet(path, tick)
    else:
        raws = (_iter_json_list if container == "json" else _iter_jsonl)(path, tick)
        shape = None if detected else forced_shape
    if limit is not None:
        raws = itertools.islice(raws, limit)

    result = IngestResult(dataset=dataset, path=str(path), format=fmt)
    seen: set[str] = set()
    with engine.begin() as conn:
        dataset_id, offset = _dataset_id(conn, dataset, str(path))
        writer = (_PostgresWriter if is_postgres(engine) else _SqliteWriter)(conn, dataset_id)
        rows: list[tuple[int, str, str, str, str, int, str | None]] = []
        try:
            for raw in raws:
                result.read += 1
                counter[0] = result.read
                try:
                    if raw.error is not None:
                        raise _Invalid(raw.error)
                    obj = raw.obj
                    if not isinstance(obj, dict):
                        if result.read == 1 and shape is None:
                            raise _unknown_format(path, f"the first record is a JSON {type(obj).__name__}, "
                                                        f"not an object")
                        raise _Invalid(f"not a JSON object (got {type(obj).__name__})")
                    if shape is None:  # detected from the first record's fields
                        shape = _shape_of(set(obj))
                        if shape is None:
                            raise _unknown_format(
                                path, f"the first record has fields {sorted(obj)}; expected "
                                      f"instruction/input/output, conversations or messages")
                        if fmt in ("alpaca-json", "jsonl") and shape != "alpaca":
                            fmt = result.format = shape
                    instruction, inp, output = _SHAPES[shape](obj)
                    original_id = _original_id(obj)
                    instruction, inp, output = canonical(instruction), canonical(inp), canonical(output)
                    digest = _checked_digest(instruction, inp, output)
                except _Invalid as exc:
                    bad = InvalidRecord(raw.record, raw.line, str(exc))
                    if not skip_invalid:
                        hint = SKIP_HINT if raw.error is None else SKIP_HINT.replace("the record", "the line")
                        where = f"line {raw.line}" if raw.error is not None and raw.line else bad.where
                        raise IngestError(f"{path}, {where}: {bad.reason}. {hint}") from None
                    result.invalid.append(bad)
                    continue
                if digest in seen:
                    continue
                seen.add(digest)
                rows.append((offset + raw.record - 1, digest, instruction, inp, output,
                             len(instruction) + len(inp) + len(output), original_id))
                if len(rows) >= CHUNK:
                    writer.write(rows)
                    rows = []
            if rows:
                writer.write(rows)
        finally:
            writer.finish()
        result.new = writer.new_members
        result.new_samples = writer.new_samples
        result.duplicates = result.read - len(result.invalid) - result.new
    return result


# ---------------------------------------------------------------------------------------- listing


def dataset_rows(engine: Engine) -> list[tuple[str, int, str, str | None]]:
    """(name, samples, created, source) for every dataset, by name."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT d.name, COUNT(m.sample_id), d.created_at, d.source FROM datasets d "
            "LEFT JOIN dataset_samples m ON m.dataset_id = d.id "
            "GROUP BY d.id, d.name, d.created_at, d.source ORDER BY d.name"
        )).all()
    return [(name, int(n), _when(created), source) for name, n, created, source in rows]


def sample_counts(engine: Engine) -> tuple[list[tuple[str, int]], int]:
    """([(dataset, samples)], total distinct samples stored)."""
    with engine.connect() as conn:
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
