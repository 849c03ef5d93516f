"""The pure half of ingest: detect a file's format and read its records into plain `Record`s.

No database here: a `RecordReader` yields canonical, validated records (or `InvalidRecord`s);
`selectit.io.ingest` hashes, de-duplicates and writes them. Record shapes, rendering and column
maps are `selectit.io.records`; a JSON list is scanned by `selectit.io.json_text`; saved
`datasets` directories and Hub datasets are opened by `selectit.io.hub`.

Formats (detected from the extension and the first record, or forced with `fmt`):

- ``alpaca-json``: a JSON list of ``{"instruction", "input", "output"}`` objects;
- ``jsonl``: one such object per line;
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": …}, …]}``
  records (optionally with a top-level ``system`` string), as a JSON list or JSONL;
- ``messages``: OpenAI-style ``{"messages": [{"role": "system"|"user"|"assistant", "content": …}]}``
  records, as a JSON list or JSONL;
- TRL's prompt-completion records, ``{"prompt": …, "completion": …}``, read in any of the JSON and
  tabular formats: two strings (the instruction and the output), or two message lists (the
  conversational form: rendered as one conversation, prompt turns then completion turns);
- ``parquet``: columns ``instruction``/``input``/``output``, or ``conversations``, or ``messages``;
- ``csv`` / ``tsv``: a header row naming the columns, then one record per row (all text);
- ``arrow``: an Arrow IPC file or stream (``.arrow``, ``.arrows``, ``.feather``), columns as Parquet's;
- ``hf-dir``: a directory written by ``datasets.Dataset.save_to_disk`` (a ``DatasetDict`` with
  ``split``), read offline with Hugging Face ``datasets``; also a Hugging Face Hub dataset id,
  ``owner/name``, that names no file: read as the same rows from the local Hugging Face cache only
  (`hub_dataset`), nothing downloaded.

Message content may be a string or a list of text parts, ``{"type": "text", "text"|"value": …}``.
An alpaca-shaped record may carry a ``system`` prompt and LLaMA-Factory's ``history`` (the
``[user, assistant]`` exchanges before the instruction): the instruction is then rendered like a
conversation, ``"System: <system>\nUser: <h1>\nAssistant: <r1>\nUser: <instruction>"``, the input
kept apart. A column map (``--map instruction=question,input=context,output=response,system=system_prompt``;
``prompt`` and ``completion`` name ``instruction`` and ``output``) reads other schemas: Dolly,
OpenOrca, TRL.

Each record keeps its **original**: the exact text of its JSON object or JSONL line, or its row
(Parquet, Arrow, CSV, ``save_to_disk``) as compact JSON; `RecordReader.layout` keeps what the
container looked like (JSON list whitespace, line ending, CSV header, Arrow schema) and the
records' shape.

Records are read as conversations (`selectit.io.records`): the *last* assistant turn is the
response (``output``); the turns before it become the ``instruction``, one turn per line as
``"<Role>: <text>"`` with Role ∈ System, User, Assistant, Tool, joined by ``"\n"`` (a ShareGPT
top-level ``system`` comes first). A context of one single user turn becomes the instruction as
is. ``input`` is empty; turns after the last assistant turn are not rated (`Record.trailing` counts
them). A record carrying a ``content_hash`` (a selectit export) whose user turn is an Alpaca
instruction and input joined by a newline is read back as that instruction and input.

Canonical form (`canonical`): ``\\r\\n`` → ``\\n``, then Unicode NFC, for each of instruction,
input and output; that is the text stored and hashed. A record whose text no backend can store
(a NUL character, an unpaired surrogate) is invalid, and so is a record over `MAX_RECORD_BYTES`
(64 MiB of UTF-8: a JSON list's object, a row) — a JSON line that long is not even read.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from selectit.io.hub import datasets_offline, hf_dataset, hub_dataset, hub_id  # noqa: F401 - re-exported
from selectit.io.json_text import _decode_error, _loads, _NotJson, _Raw, iter_json_list
from selectit.io.records import MAP_ALIASES, MAP_FIELDS, check_map, map_hint, parse_column_map  # noqa: F401
from selectit.io.file_bytes import check_encoding as _check_encoding
from selectit.io.file_bytes import first_byte as _first_byte
from selectit.io.records import HASH_FIELD, IngestError, canonical, parse, render_conversation, split_by_hash  # noqa: F401
from selectit.io.records import rated_turns, role_aliases
from selectit.io.records import SHAPE_FIELDS as _SHAPE_FIELDS
from selectit.io.records import BadRecord as _Invalid
from selectit.io.records import json_type as _json_type
from selectit.io.records import shape_of as _shape_of

FORMATS = ("alpaca-json", "jsonl", "sharegpt", "messages", "parquet", "csv", "tsv", "arrow", "hf-dir")
#: The container each format is read from ("" → a JSON list or JSONL, from the first byte).
_CONTAINER = {"alpaca-json": "json", "jsonl": "jsonl", "sharegpt": "", "messages": "", "parquet": "parquet",
              "csv": "csv", "tsv": "tsv", "arrow": "arrow", "hf-dir": "hf-dir"}
_TABULAR = ("parquet", "csv", "tsv", "arrow", "hf-dir")
#: Parquet rows read per batch; bounded memory for any file size.
CHUNK = 20_000
#: dataset_samples.original_id is VARCHAR(200).
MAX_ORIGINAL_ID = 200
#: The most one record (a JSON line or object, a row, a CSV field) may take; longer ones are refused.
MAX_RECORD_BYTES = 64 * 2**20


def _record_limit() -> str:
    return f"{MAX_RECORD_BYTES // 2**20} MiB" if MAX_RECORD_BYTES % 2**20 == 0 else f"{MAX_RECORD_BYTES:,} bytes"


class Record(NamedTuple):
    """One valid record, its fields in canonical form (a tuple: cheap for millions of records)."""

    number: int  # 1-based record number in the file
    line: int | None  # 1-based line (JSONL), when known
    instruction: str
    input: str
    output: str
    original_id: str | None  # the record's own `id`, if any
    original: str | None = None  # the record as it was in the file (see the module docstring)
    trailing: int = 0  # turns after the last assistant turn, not rated
    turns: str | None = None  # `samples.turns` as JSON text (`Conversation.stored_turns`), if any
    n_turns: int = 1  # rated assistant turns
    quirks: tuple[str, ...] = ()  # `selectit.io.records.QUIRKS` of the conversation


@dataclass(frozen=True)
class InvalidRecord:
    record: int  # 1-based record number in the file
    line: int | None  # 1-based line (JSONL), when known
    reason: str
    unparsed: bool = field(default=False, compare=False)  # the line was not even valid JSON
    original_id: str | None = None  # the record's own `id`, if it has a usable one

    @property
    def where(self) -> str:
        """"record 72 (id ZUkSe7V_0)", "record 3 (line 4)": the position, and the id a user searches for."""
        about = [f"id {self.original_id}"] if self.original_id else []
        about += [f"line {self.line}"] if self.line is not None else []
        return f"record {self.record}" + (f" ({', '.join(about)})" if about else "")

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


#: progress(records_read, units_done, units_total): units are bytes (JSON) or rows (Parquet).
Progress = Callable[[int, int, int], None]


# ---------------------------------------------------------------------------------------- text


def _check_storable(instruction: str, input: str, output: str) -> None:
    """Refuse text no backend can store: NUL (PostgreSQL text) or a lone surrogate (UTF-8)."""
    whole = instruction + input + output  # one scan in the common case
    if "\x00" in whole:
        name = next(n for n, t in (("instruction", instruction), ("input", input), ("output", output)) if "\x00" in t)
        raise _Invalid(f"field '{name}' contains a NUL character")
    if not whole.isascii():
        try:
            whole.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate from a JSON \ud800 escape
            raise _Invalid(f"text contains an unpaired surrogate ({exc.object[exc.start]!a})") from None


# ---------------------------------------------------------------------------------------- reading



def compact(obj: Any) -> str:
    """A row (Parquet, Arrow, CSV) as the compact JSON text kept as its original."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), default=_jsonable)


def _jsonable(value: Any) -> Any:
    import base64
    import datetime as dt
    import decimal

    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode()
    raise TypeError(f"a value of type {type(value).__name__} cannot be kept")


def _schema_layout(schema) -> dict[str, Any]:  # noqa: ANN001 - pyarrow.Schema
    import base64

    return {"schema": base64.b64encode(schema.serialize().to_pybytes()).decode()}


def _iter_jsonl(path: Path, progress: Callable[[int, int], None], layout: dict[str, Any]) -> Iterator[_Raw]:
    total = path.stat().st_size
    offset = 0
    record = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(iter(lambda: fh.readline(MAX_RECORD_BYTES + 1), b""), 1):
            if len(raw) > MAX_RECORD_BYTES:  # never hold an endless line in memory
                raise IngestError(f"{path}, line {lineno}: longer than {_record_limit()}, the most one "
                                  f"record may take. Nothing was ingested; is this a JSON Lines file?")
            start = offset
            offset += len(raw)
            if lineno == 1:
                layout["newline"] = "\r\n" if raw.endswith(b"\r\n") else "\n"
                if raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                    start += 3
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _decode_error(path, raw, start, exc, lineno) from None
            if not line.strip():
                continue
            record += 1
            text = line[:-2] if line.endswith("\r\n") else (line[:-1] if line.endswith("\n") else line)
            line = text  # an error at the end is at the end of the line, not "column 1"
            try:
                yield _Raw(record, lineno, _loads(line), text=text)
            except json.JSONDecodeError as exc:
                cut = ": the line ends before the record does" if exc.pos >= len(line.rstrip()) else ""
                yield _Raw(record, lineno, error=f"invalid JSON ({exc.msg}, column {exc.colno}{cut})")
            except _NotJson as exc:
                yield _Raw(record, lineno, error=str(exc))
            if record % 1000 == 0:
                progress(offset, total)
    progress(total, total)


def _iter_batches(batches: Iterator[Any], total: int, progress: Callable[[int, int], None]) -> Iterator[_Raw]:
    record = 0
    for batch in batches:
        batch.validate(full=True)  # corrupt offsets: ArrowInvalid here, not a crash in to_pylist
        for obj in batch.to_pylist():
            record += 1
            yield _Raw(record, None, obj, text=compact(obj))
        progress(record, total)


def _iter_parquet(path: Path, progress: Callable[[int, int], None], layout: dict[str, Any]) -> Iterator[_Raw]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    layout.update(_schema_layout(pf.schema_arrow))
    yield from _iter_batches(pf.iter_batches(batch_size=CHUNK), pf.metadata.num_rows, progress)


def _open_arrow(path: Path):  # noqa: ANN202 - (schema, batches, rows or -1)
    import pyarrow as pa

    try:
        reader = pa.ipc.open_file(str(path))
        return reader.schema, (reader.get_batch(i) for i in range(reader.num_record_batches)), sum(
            reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
    except pa.ArrowInvalid:
        reader = pa.ipc.open_stream(str(path))
        return reader.schema, iter(reader), -1


def _iter_arrow(path: Path, progress: Callable[[int, int], None], layout: dict[str, Any]) -> Iterator[_Raw]:
    schema, batches, total = _open_arrow(path)
    layout.update(_schema_layout(schema))
    yield from _iter_batches(batches, total, progress)


def _iter_csv(path: Path, progress: Callable[[int, int], None], layout: dict[str, Any],
              delimiter: str) -> Iterator[_Raw]:
    import csv

    total = path.stat().st_size
    with path.open("rb") as fh:
        first = fh.readline()
    layout["newline"] = "\r\n" if first.endswith(b"\r\n") else "\n"
    layout["delimiter"] = delimiter
    csv.field_size_limit(MAX_RECORD_BYTES)  # the default, 131,072 characters, is less than a long response
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = next(reader, None)
            if not header:
                raise IngestError(f"{path} has no header row. Nothing was ingested; the first line must name "
                                  f"the columns (e.g. instruction,input,output).")
            doubled = sorted({c for c in header if header.count(c) > 1})
            if doubled:
                raise IngestError(f"{path}: the header names the column {', '.join(map(repr, doubled))} twice; one "
                                  f"value would be lost. Nothing was ingested; rename the columns.")
            layout["columns"] = header
            record = 0
            for row in reader:
                if not row or row == [""]:
                    continue
                record += 1
                line = reader.line_num
                if len(row) != len(header):
                    yield _Raw(record, line, error=f"{len(row)} fields where the header has {len(header)}")
                    continue
                obj = dict(zip(header, row))
                yield _Raw(record, line, obj, text=compact(obj))
                if record % 1000 == 0:
                    progress(min(fh.tell(), total), total)
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x}). Nothing was ingested; "
                          f"re-encode the file as UTF-8 and ingest that.") from None
    except csv.Error as exc:  # e.g. a field longer than MAX_RECORD_BYTES
        raise IngestError(f"{path}, line {reader.line_num + 1}: {exc}. Nothing was ingested.") from None
    progress(total, total)


def _short(exc: BaseException) -> str:
    """An exception's message on one line, at most 200 characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:199] + "…"


def _iter_hf_dir(ds: Any, progress: Callable[[int, int], None], layout: dict[str, Any]) -> Iterator[_Raw]:
    if ds._indices is not None:  # noqa: SLF001 - a selected/filtered dataset: materialise its rows
        ds = ds.flatten_indices()
    table = ds.data.table
    layout.update(_schema_layout(table.schema))
    yield from _iter_batches(iter(table.to_batches(max_chunksize=CHUNK)), table.num_rows, progress)


def _original_id(obj: dict[str, Any], key: str = "id") -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise _Invalid(f"field 'id' must be a string or a number (got {_json_type(value)})")
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


_SUFFIX_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".arrow": "arrow",
                   ".arrows": "arrow", ".feather": "arrow", ".ipc": "arrow"}


def detect_format(path: Path) -> tuple[str, str, str]:
    """(format name, container, shape): container ∈ json, jsonl, parquet, csv, tsv, arrow, hf-dir;
    shape ∈ alpaca, sharegpt, messages ("" when the records must say)."""
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return "hf-dir", "hf-dir", ""
        raise IngestError(f"{path} is a directory but not one written by `datasets` save_to_disk (no state.json or "
                          f"dataset_dict.json). Nothing was ingested; give a file, or a saved dataset directory.")
    with path.open("rb") as fh:
        magic = fh.read(6)
    if magic[:4] == b"PAR1":
        return "parquet", "parquet", ""
    if magic == b"ARROW1":
        return "arrow", "arrow", ""
    by_suffix = _SUFFIX_FORMATS.get(path.suffix.lower())
    if by_suffix is not None:
        return by_suffix, by_suffix, ""
    first = _first_byte(path)
    if not first:
        raise IngestError(f"{path} is empty. Nothing was ingested; give a file with at least one record.")
    if first == b"[":
        return "alpaca-json", "json", ""
    if first == b"{":
        return "jsonl", "jsonl", ""
    snippet = path.open("rb").read(20)
    raise _unknown_format(path, f"not JSON, JSONL, Parquet, CSV or Arrow; it starts with {snippet!r}")


def _container_for(path: Path, fmt: str) -> str:
    container = _CONTAINER[fmt]
    if container:
        return container
    return "json" if _first_byte(path) == b"[" else "jsonl"  # sharegpt / messages: either


# ---------------------------------------------------------------------------------------- records of a file


class RecordReader:
    """The records of one file, in file order: `Record` or `InvalidRecord` items.

    Opening it checks the file and detects its format (raising `IngestError` before anything is
    read); iterating reads it once. `format` is the detected format, refined by the first record
    (an `alpaca-json` / `jsonl` file of conversations is `sharegpt` or `messages`); `read` counts
    the records read so far; `container` and `layout` say how the records sat in the file (filled
    while reading). `column_map` maps selectit's fields to the file's columns (see
    `parse_column_map`); `split` picks a split of a saved `DatasetDict`. Unreadable files raise
    `IngestError` while iterating.
    """

    def __init__(self, path: str | Path, fmt: str | None = None, *, limit: int | None = None,
                 progress: Progress | None = None, column_map: dict[str, str] | str | None = None,
                 split: str | None = None) -> None:
        path = Path(path)
        self.hub_id = hub_id(path)
        if not path.exists() and self.hub_id is None:
            raise IngestError(f"{path}: no such file. Nothing was ingested; check the path.")
        if path.exists() and not (path.is_file() or path.is_dir()):
            raise IngestError(f"{path} is not a regular file (a device, pipe or socket could be endless). Nothing "
                              f"was ingested; give a file, or `-` to read the records from standard input.")
        if fmt is not None and fmt not in FORMATS:
            raise IngestError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)} (or leave "
                              f"--format out to detect it).")
        if self.hub_id is not None and fmt not in (None, "hf-dir"):
            raise IngestError(f"{path}: no such file (read as a Hugging Face Hub dataset, it is hf-dir rows, not "
                              f"{fmt}). Nothing was ingested; check the path, or leave --format out.")
        #: What the ingest record names (the file, or the hub id) and the local files it digests.
        self.source = self.hub_id or str(path)
        self.local = path
        if path.is_dir() and fmt not in (None, "hf-dir"):
            raise IngestError(f"{path} is a directory; --format {fmt} reads a file. Nothing was ingested.")
        if path.is_file() and path.suffix.lower() not in (".parquet", ".pq") and fmt != "parquet":
            _check_encoding(path)
        self.path = path
        self.limit = limit
        self.read = 0
        self.split = split
        self.column_map = parse_column_map(column_map)
        self.layout: dict[str, Any] = {}
        self._report: Progress = progress or (lambda *_: None)
        self._detected = fmt is None
        if self.hub_id is not None:
            fmt, self.container = "hf-dir", "hf-dir"
        elif fmt is None:
            fmt, self.container, _ = detect_format(path)
        else:
            if path.is_file() and path.stat().st_size == 0:
                raise IngestError(f"{path} is empty. Nothing was ingested; give a file with at least one record.")
            self.container = _container_for(path, fmt)
        if split is not None and self.container != "hf-dir":
            raise IngestError(f"--split picks a split of a saved DatasetDict directory or a Hub dataset; {path} "
                              f"is a {fmt} file. "
                              f"Nothing was ingested; leave --split out.")
        self.format = fmt
        self._shape: str | None = None
        self._columns: list[str] | None = None
        self._hf = None
        if self.container in _TABULAR:
            names = self._column_names()
            self._columns = names
            check_map(path, self.column_map, names)
            self._shape = "alpaca" if self.column_map else _shape_of(names)
            if self._shape is None:
                hint = map_hint(names)
                raise _unknown_format(path, f"columns {names}; expected {_SHAPE_FIELDS}"
                                            + (f", or map them: {hint}" if hint else ""))
        elif not self._detected:
            self._shape = {"sharegpt": "sharegpt", "messages": "messages", "alpaca-json": "alpaca",
                           "jsonl": "alpaca"}[fmt]

    def _column_names(self) -> list[str]:
        path = self.path
        try:
            if self.container == "parquet":
                import pyarrow.parquet as pq

                return pq.ParquetFile(path).schema_arrow.names
            if self.container == "arrow":
                return _open_arrow(path)[0].names
            if self.container == "hf-dir" and self.hub_id is not None:
                self._hf, self.local = hub_dataset(self.hub_id, self.split)
                return list(self._hf.column_names)
            if self.container == "hf-dir":
                self._hf = hf_dataset(path, self.split)
                return list(self._hf.column_names)
            import csv

            csv.field_size_limit(MAX_RECORD_BYTES)
            with path.open(encoding="utf-8-sig", newline="") as fh:
                return next(csv.reader(fh, delimiter="\t" if self.container == "tsv" else ","), [])
        except IngestError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow, datasets and csv raise several kinds
            raise IngestError(f"{path}: cannot read it as {self.format} ({exc}). Nothing was ingested; "
                              f"check the file, or pass --format.") from None

    def _raws(self) -> Iterator[_Raw]:
        tick = lambda done, total: self._report(self.read, done, total)  # noqa: E731
        c, layout = self.container, self.layout
        if c == "parquet":
            raws = _iter_parquet(self.path, tick, layout)
        elif c == "arrow":
            raws = _iter_arrow(self.path, tick, layout)
        elif c in ("csv", "tsv"):
            raws = _iter_csv(self.path, tick, layout, "\t" if c == "tsv" else ",")
        elif c == "hf-dir":
            raws = _iter_hf_dir(self._hf, tick, layout)
        else:
            raws = (iter_json_list if c == "json" else _iter_jsonl)(self.path, tick, layout)
        return itertools.islice(raws, self.limit) if self.limit is not None else raws

    def _read(self) -> Iterator[_Raw]:
        """`_raws`, with a file that breaks off while being read (a corrupt Parquet page, a truncated
        Arrow stream, an unreadable disk) as one `IngestError` naming it and where."""
        import pyarrow as pa

        try:
            yield from self._raws()
        except IngestError:
            raise
        except (pa.ArrowException, OSError) as exc:
            where = f"after record {self.read}" if self.read else "at its start"
            raise IngestError(f"{self.path}: cannot read it as {self.format} {where} ({_short(exc)}). Nothing was "
                              f"ingested; check the file.") from None

    def __iter__(self) -> Iterator[Record | InvalidRecord]:
        for raw in self._read():
            self.read += 1
            try:
                yield self._parse(raw)
            except _Invalid as exc:
                if self.read == 1 and raw.error is None and isinstance(raw.obj, dict):
                    self._explain_first(raw.obj, str(exc))
                yield InvalidRecord(raw.record, raw.line, str(exc), unparsed=raw.error is not None,
                                    original_id=self._id_of(raw))
        if self._shape is not None:  # how the records were read, for their export
            self.layout["shape"] = self._shape
        if self.read == 0:  # `[]`, or a Parquet file without rows: like an empty file, an error
            raise IngestError(f"{self.path} holds no records. Nothing was ingested; give a file with at least "
                              f"one record.")

    def _id_of(self, raw: _Raw) -> str | None:
        """The invalid record's own id, where it has a usable one (else None: the id may be what is wrong)."""
        if raw.error is not None or not isinstance(raw.obj, dict):
            return None
        try:
            found = _original_id(raw.obj, self.column_map.get("id", "id"))
        except _Invalid:
            return None
        return found if found and found.isprintable() and len(found) <= 80 else None

    def _explain_first(self, obj: dict[str, Any], reason: str) -> None:
        """A first record that lacks a field but has a column that usually holds it is another
        schema: say so, and which --map would read it (else it is an ordinary invalid record)."""
        hint = map_hint(list(obj)) if reason.startswith("missing field") and not self.column_map else ""
        if hint:
            raise IngestError(f"{self.path}, record 1: {reason}; the first record has fields {sorted(obj)}. "
                              f"Nothing was ingested; map the columns, e.g. {hint} (or fix the record).")

    def _parse(self, raw: _Raw) -> Record:
        if raw.error is not None:
            raise _Invalid(raw.error)
        text = raw.text or ""  # a character takes 1 to 4 bytes: encoded only when it could be too long
        if len(text) > MAX_RECORD_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > MAX_RECORD_BYTES:
            raise _Invalid(f"longer than {_record_limit()}, the most one record may take")
        obj = raw.obj
        if not isinstance(obj, dict):
            if self.read == 1 and self._shape is None:
                raise _unknown_format(self.path, f"the first record is {_json_type(obj)}, not an object")
            raise _Invalid(f"not a JSON object (got {_json_type(obj)})")
        if self._shape is None:  # detected from the first record's fields
            if self.column_map:
                check_map(self.path, self.column_map, list(obj))
                self._shape = "alpaca"
            else:
                self._shape = _shape_of(set(obj))
            if self._shape is None:
                hint = map_hint(list(obj))
                raise _unknown_format(
                    self.path, f"the first record has fields {sorted(obj)}; expected {_SHAPE_FIELDS}"
                               + (f", or map them: {hint}" if hint else ""))
            if self.format in ("alpaca-json", "jsonl") and self._shape in ("sharegpt", "messages"):
                self.format = self._shape
        conv = parse(obj, self._shape, self.column_map)
        instruction, inp, output = conv.sample()
        original_id = _original_id(obj, self.column_map.get("id", "id"))
        instruction, inp, output = canonical(instruction), canonical(inp), canonical(output)
        if HASH_FIELD in obj:  # an export of selectit's: the sample it came from
            instruction, inp = split_by_hash(instruction, inp, output, obj[HASH_FIELD])
        _check_storable(instruction, inp, output)
        turns = conv.stored_turns()
        return Record(raw.record, raw.line, instruction, inp, output, original_id, raw.text, conv.trailing,
                      None if turns is None else json.dumps(turns, ensure_ascii=False),
                      1 if turns is None else len(rated_turns(turns)),
                      conv.quirks() + (("role-alias",) if role_aliases(obj, self._shape) else ()))


def read_records(path: str | Path, fmt: str | None = None, *, limit: int | None = None,
                 column_map: dict[str, str] | str | None = None) -> list[Record | InvalidRecord]:
    """All records of a file (small files, tests and tools; `ingest_file` streams a `RecordReader`).

    Example:
        >>> import json, tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "a.jsonl"
        >>> _ = f.write_text(json.dumps({"instruction": "Hi", "output": "Hello\\r\\n"}) + "\\n")
        >>> read_records(f)[0].output
        'Hello\\n'
    """
    return list(RecordReader(path, fmt, limit=limit, column_map=column_map))
