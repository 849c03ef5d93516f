"""JSON text read record by record: a JSON list scanned one element at a time (each record's exact
text, the list's whitespace kept in the layout), and the parse helpers JSON Lines shares with it
(records JSON does not allow are invalid records, not crashes).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectit.io.records import IngestError
from selectit.io.records import json_type as _json_type


@dataclass
class _Raw:
    record: int
    line: int | None
    obj: Any = None
    error: str | None = None  # set: the record could not even be parsed (skippable)
    text: str | None = None  # the record's original text


def _decode_error(path: Path, data: bytes, base: int, exc: UnicodeDecodeError, line: int) -> IngestError:
    offset = base + exc.start
    return IngestError(
        f"{path}: not valid UTF-8 at byte {offset} (line {line}, byte 0x{data[exc.start]:02x}). "
        f"Nothing was ingested; re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 {path.name} "
        f"> fixed.json`) and ingest that."
    )


class _NotJson(ValueError):
    """Parsed text that JSON does not allow (NaN, Infinity) or that Python cannot hold."""


def _no_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not valid JSON")


def _loads(text: str) -> Any:
    """json.loads, with what cannot be a record turned into `_NotJson`: NaN/Infinity literals,
    nesting deeper than Python's recursion limit, integers longer than Python converts."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise _NotJson("nested too deeply (arrays or objects inside each other beyond Python's limit)") from None
    except _NotJson:
        raise
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise _NotJson(f"a number too long to read ({str(exc).split(';')[0]})") from None


_WS = re.compile(r"[ \t\n\r]*")


def iter_json_list(path: Path, progress: Callable[[int, int], None], layout: dict[str, Any]) -> Iterator[_Raw]:
    """The records of a JSON list, each with its exact text; `layout` gets the whitespace around them."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _decode_error(path, data, 0, exc, data.count(b"\n", 0, exc.start) + 1) from None
    decoder = json.JSONDecoder(parse_constant=_no_constant)

    def syntax_error(exc: json.JSONDecodeError) -> IngestError:
        return IngestError(
            f"{path}, line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg}). Nothing was "
            f"ingested; fix the file (a JSON list cannot be read past a syntax error), or convert it to JSONL "
            f"and use --skip-invalid.")

    i = _WS.match(text).end()
    if i >= len(text) or text[i] != "[":
        try:  # say what the document is instead, as before
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise syntax_error(exc) from None
        raise IngestError(f"{path}: expected a JSON list of records, got {_json_type(items)}. "
                          f"Nothing was ingested; wrap the records in [ … ] or write one per line (JSONL).")
    total = len(text)
    i += 1
    start = _WS.match(text, i).end()
    layout["open"] = text[i:start]
    record = 0
    last_end = None
    pos = start
    while True:
        if pos < total and text[pos] == "]":
            break
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise syntax_error(exc) from None
        except (RecursionError, ValueError) as exc:  # too deep, NaN, a number too long: this item only
            end = _value_end(text, pos)
            record += 1
            yield _Raw(record, None, error=str(exc) if isinstance(exc, _NotJson) else (
                "nested too deeply (arrays or objects inside each other beyond Python's limit)"
                if isinstance(exc, RecursionError) else f"a number too long to read ({str(exc).split(';')[0]})"))
            after = _WS.match(text, end).end()
            if after < total and text[after] == ",":
                pos = _WS.match(text, after + 1).end()
                continue
            pos = after
            break
        record += 1
        yield _Raw(record, None, obj, text=text[pos:end])
        if record % 1000 == 0:
            progress(end, total)
        after = _WS.match(text, end).end()
        if after < total and text[after] == ",":
            nxt = _WS.match(text, after + 1).end()
            if record == 1:
                layout["sep"] = text[end:nxt]
            pos = nxt
            last_end = None
            continue
        last_end = end
        pos = after
        if pos >= total or text[pos] != "]":
            try:
                json.loads(text)
            except json.JSONDecodeError as exc:
                raise syntax_error(exc) from None
        break
    close_at = pos
    layout["close"] = text[last_end:close_at] if last_end is not None else ""
    tail = text[close_at + 1:]
    if tail.strip():
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise syntax_error(exc) from None
    layout["end"] = tail
    layout.setdefault("sep", "," + layout["open"])
    progress(total, total)


def _value_end(text: str, pos: int) -> int:
    """Where the JSON value starting at `pos` ends, found without recursion (strings respected)."""
    depth, in_string, escaped = 0, False, False
    for i in range(pos, len(text)):
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
                if depth == 0:
                    return i + 1
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
            if depth <= 0:
                return i + 1 if depth == 0 else i
        elif depth == 0 and (ch == "," or ch.isspace()):
            return i
    return len(text)
