"""What a file's first bytes say before it is parsed: its encoding (UTF-8 only; UTF-16/32 are
refused with the command that re-encodes them) and, for JSON, whether it holds a list or lines."""

from __future__ import annotations

from pathlib import Path

from selectit.io.records import IngestError


def wide_encoding(head: bytes) -> str | None:
    """UTF-16 or UTF-32 (by BOM, or by the NUL bytes around ASCII), else None."""
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"),
                      (b"\xff\xfe", "UTF-16LE"), (b"\xfe\xff", "UTF-16BE")):
        if head.startswith(bom):
            return name
    if len(head) >= 4 and head[0] and not head[1] and not head[2] and not head[3]:
        return "UTF-32LE"
    if len(head) >= 4 and not head[0] and not head[1] and not head[2] and head[3]:
        return "UTF-32BE"
    if len(head) >= 2 and head[0] and not head[1]:
        return "UTF-16LE"
    if len(head) >= 2 and not head[0] and head[1]:
        return "UTF-16BE"
    return None


def check_encoding(path: Path) -> None:
    """Refuse a UTF-16 or UTF-32 file with the command that re-encodes it."""
    with path.open("rb") as fh:
        head = fh.read(4)
    wide = wide_encoding(head)
    if wide is not None:
        raise IngestError(
            f"{path}: the file is {wide[:6]} text ({wide}), not UTF-8. Nothing was ingested; re-encode it as UTF-8 "
            f"(e.g. `iconv -f {wide} -t UTF-8 {path.name} > fixed.json`) and ingest that."
        )


def first_byte(path: Path) -> bytes:
    """The first byte of the text after a UTF-8 BOM and whitespace (a JSON list starts with `[`)."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    if head.startswith(b"\xef\xbb\xbf"):
        head = head[3:]
    return head.lstrip()[:1]
