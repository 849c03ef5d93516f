"""The pure half of ingest: detect a file's format and read its records into plain `Record`s.

No database here: a `RecordReader` yields canonical, validated records (or `InvalidRecord`s);
`selectit.ingest` hashes, de-duplicates and writes them.

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

Canonical form (`canonical`): ``\\r\\n`` → ``\\n``, then Unicode NFC, for each of instruction,
input and output; that is the text stored and hashed. A record whose text no backend can store
(a NUL character, an unpaired surrogate) is invalid.
"""

from __future__ import annotations

import itertools
import json
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from selectit.errors import SelectitError

FORMATS = ("alpaca-json", "jsonl", "sharegpt", "messages", "parquet")
#: Parquet rows read per batch; bounded memory for any file size.
CHUNK = 20_000
#: dataset_samples.original_id is VARCHAR(200).
MAX_ORIGINAL_ID = 200

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


class Record(NamedTuple):
    """One valid record, its fields in canonical form (a tuple: cheap for millions of records)."""

    number: int  # 1-based record number in the file
    line: int | None  # 1-based line (JSONL), when known
    instruction: str
    input: str
    output: str
    original_id: str | None  # the record's own `id`, if any


@dataclass(frozen=True)
class InvalidRecord:
    record: int  # 1-based record number in the file
    line: int | None  # 1-based line (JSONL), when known
    reason: str
    unparsed: bool = field(default=False, compare=False)  # the line was not even valid JSON

    @property
    def where(self) -> str:
        return f"record {self.record}" + (f" (line {self.line})" if self.line is not None else "")

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


#: progress(records_read, units_done, units_total): units are bytes (JSON) or rows (Parquet).
Progress = Callable[[int, int, int], None]


# ---------------------------------------------------------------------------------------- text


def canonical(text: str) -> str:
    """The canonical form of one field: ``\\r\\n`` → ``\\n``, then Unicode NFC."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    # ASCII is always NFC; the test saves a normalisation pass on most records.
    return text if text.isascii() else unicodedata.normalize("NFC", text)



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


# ---------------------------------------------------------------------------------------- records of a file


class RecordReader:
    """The records of one file, in file order: `Record` or `InvalidRecord` items.

    Opening it checks the file and detects its format (raising `IngestError` before anything is
    read); iterating reads it once. `format` is the detected format, refined by the first record
    (an `alpaca-json` / `jsonl` file of conversations is `sharegpt` or `messages`); `read` counts
    the records read so far. Unreadable files raise `IngestError` while iterating.
    """

    def __init__(self, path: str | Path, fmt: str | None = None, *, limit: int | None = None,
                 progress: Progress | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise IngestError(f"{path}: no such file. Nothing was ingested; check the path.")
        if fmt is not None and fmt not in FORMATS:
            raise IngestError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)} (or leave "
                              f"--format out to detect it).")
        self.path = path
        self.limit = limit
        self.read = 0
        self._report: Progress = progress or (lambda *_: None)
        self._detected = fmt is None
        if fmt is None:
            fmt, self._container, _ = detect_format(path)
        else:
            if path.stat().st_size == 0:
                raise IngestError(f"{path} is empty. Nothing was ingested; give a file with at least one record.")
            self._container = _container_for(path, fmt)
        self.format = fmt
        self._shape: str | None = None
        if self._container == "parquet":
            import pyarrow.parquet as pq

            try:
                names = pq.ParquetFile(path).schema_arrow.names
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds
                raise IngestError(f"{path}: cannot read it as Parquet ({exc}). Nothing was ingested; "
                                  f"check the file, or pass --format.") from None
            self._shape = _shape_of(names)
            if self._shape is None:
                raise _unknown_format(path, f"Parquet columns {names}; expected instruction/input/output, "
                                            f"conversations or messages")
        elif not self._detected:
            self._shape = {"sharegpt": "sharegpt", "messages": "messages", "alpaca-json": "alpaca",
                           "jsonl": "alpaca"}[fmt]

    def _raws(self) -> Iterator[_Raw]:
        tick = lambda done, total: self._report(self.read, done, total)  # noqa: E731
        if self._container == "parquet":
            raws = _iter_parquet(self.path, tick)
        else:
            raws = (_iter_json_list if self._container == "json" else _iter_jsonl)(self.path, tick)
        return itertools.islice(raws, self.limit) if self.limit is not None else raws

    def __iter__(self) -> Iterator[Record | InvalidRecord]:
        for raw in self._raws():
            self.read += 1
            try:
                yield self._parse(raw)
            except _Invalid as exc:
                yield InvalidRecord(raw.record, raw.line, str(exc), unparsed=raw.error is not None)

    def _parse(self, raw: _Raw) -> Record:
        if raw.error is not None:
            raise _Invalid(raw.error)
        obj = raw.obj
        if not isinstance(obj, dict):
            if self.read == 1 and self._shape is None:
                raise _unknown_format(self.path, f"the first record is a JSON {type(obj).__name__}, not an object")
            raise _Invalid(f"not a JSON object (got {type(obj).__name__})")
        if self._shape is None:  # detected from the first record's fields
            self._shape = _shape_of(set(obj))
            if self._shape is None:
                raise _unknown_format(
                    self.path, f"the first record has fields {sorted(obj)}; expected "
                               f"instruction/input/output, conversations or messages")
            if self.format in ("alpaca-json", "jsonl") and self._shape != "alpaca":
                self.format = self._shape
        instruction, inp, output = _SHAPES[self._shape](obj)
        original_id = _original_id(obj)
        instruction, inp, output = canonical(instruction), canonical(inp), canonical(output)
        _check_storable(instruction, inp, output)
        return Record(raw.record, raw.line, instruction, inp, output, original_id)


def read_records(path: str | Path, fmt: str | None = None, *, limit: int | None = None) -> list[Record | InvalidRecord]:
    """All records of a file (small files, tests and tools; `ingest_file` streams a `RecordReader`).

    Example:
        >>> import json, tempfile, pathlib
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "a.jsonl"
        >>> _ = f.write_text(json.dumps({"instruction": "Hi", "output": "Hello\\r\\n"}) + "\\n")
        >>> read_records(f)[0].output
        'Hello\\n'
    """
    return list(RecordReader(path, fmt, limit=limit))
