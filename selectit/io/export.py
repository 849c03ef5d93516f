"""Writing a selection the way fine-tuning tools read it, with a dataset card that says where it came from.

Formats (`EXPORT_FORMATS`):

- ``original``: each selected record exactly as it was ingested (the bytes of its JSON object or
  JSONL line, or its Parquet/Arrow/CSV row), in the input's own container;
- ``alpaca-json`` / ``jsonl``: ``{"instruction", "input", "output"}`` as a JSON list or one object
  per line; a conversation adds LLaMA-Factory's ``system`` and ``history`` columns (on every record
  of the export once one needs them);
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"observation", "value": …}], "system": …}``
  (LLaMA-Factory's sharegpt formatting);
- ``messages``: ``{"messages": [{"role": "system"|"user"|"assistant"|"tool", "content": …}]}`` (TRL,
  axolotl, OpenAI), one object per line;
- ``parquet``: the alpaca columns;
- ``hf-dataset``: a directory written by ``datasets.Dataset.save_to_disk`` (alpaca columns plus
  ``messages``), loadable with ``datasets.load_from_disk``.

A conversation keeps its turns and system prompt when the source record had them (they are read
back from the kept original by `selectit.io.records`, through the last assistant turn: what was
rated); a record without an original (ingested by an older selectit) is written from the stored
instruction/input/output. When a converted record would be read back as another sample (an
Alpaca input joined to the user turn), every record of the export carries its ``content_hash``,
which ingest honours. ``hf-dataset`` without an output path is a `datasets.Dataset` in memory
(`in_memory_dataset`).

Every export writes a dataset card (YAML front matter: the provenance) and, with
``llamafactory=True``, merges its entry into ``dataset_info.json`` beside the data file. In a
directory the files are named after the entry (``DIR/<entry>.<ext>``, ``DIR/<entry>.README.md``).
Every file goes through `selectit.io.writer.Writer`: all targets checked first, renamed at the end.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectit.contract import EXPORT_FORMATS
from selectit.errors import NoSuchSelection
from selectit.io.records import (
    HASH_FIELD,
    BadRecord,
    Conversation,
    alpaca_fields,
    comes_back_as,
    digest,
    messages_fields,
    parse,
    shape_of,
    sharegpt_fields,
)
from selectit.io.writer import WriteError, Writer, sha256_file
from selectit.store import db

#: The file name used inside an output directory, per format.
DATA_FILE = {"alpaca-json": "data.json", "jsonl": "data.jsonl", "sharegpt": "data.json",
             "messages": "data.jsonl", "parquet": "data.parquet"}
#: The container of each ingest format, when it is exported as the original.
ORIGINAL_SUFFIX = {"json": ".json", "jsonl": ".jsonl", "parquet": ".parquet", "csv": ".csv", "tsv": ".tsv",
                   "arrow": ".arrow", "hf-dir": ""}
CARD_NAME = "README.md"
LLAMAFACTORY_INFO = "dataset_info.json"

class ExportError(WriteError):
    """An export that cannot be written as asked."""


# --------------------------------------------------------------------------------------------
# What is exported
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    """One ingested file: where a record's original came from and how its container looked."""

    ingest_id: int
    path: str
    sha256: str
    format: str  # alpaca-json | jsonl | sharegpt | messages | parquet | csv | tsv | arrow | hf-dir
    container: str  # json | jsonl | parquet | csv | tsv | arrow | hf-dir
    layout: dict[str, Any] = field(default_factory=dict)  # container style / Arrow schema / CSV header
    column_map: dict[str, str] = field(default_factory=dict)  # selectit field → the file's column


@dataclass(frozen=True)
class Item:
    """One selected sample: its stored text, its score and, when kept, its original record."""

    rank: int
    sample_id: int
    instruction: str
    input: str
    output: str
    s_model: float
    original: str | None = None  # the record's JSON text (exact bytes for JSON/JSONL inputs)
    source: Source | None = None


@dataclass(frozen=True)
class Scores:
    """--with-scores: S_sent per model and S_token per (model, prompt position) of each sample."""

    s_sent: dict[int, dict[str, float]]  # sample id → model → S_sent
    s_token: dict[int, dict[str, dict[str, float]]]  # sample id → model → "p<position>" → S_token


@dataclass
class ExportResult:
    data: Path  # the data file (or the hf-dataset directory)
    format: str  # the format written (``original`` resolved to the input's container)
    card: Path | None = None
    dataset_info: Path | None = None
    n: int = 0
    note: str | None = None  # why the default format was not `original`
    warning: str | None = None  # the dataset is only partly rankable (`selection.partial_warning`)


# --------------------------------------------------------------------------------------------
# Records in each shape
# --------------------------------------------------------------------------------------------
def conversation(item: Item) -> Conversation:
    """The item as a conversation: its original read as it was at ingest (the shape and column map
    of its file), else its stored text as one exchange."""
    obj = _original_object(item)
    if obj is not None:
        cmap = item.source.column_map if item.source is not None else {}
        layout = item.source.layout if item.source is not None else {}
        shape = layout.get("shape") or ("alpaca" if cmap else shape_of(obj))
        if shape is not None:
            try:
                return parse(obj, shape, cmap)
            except BadRecord:  # read by an older selectit under other rules: the stored text
                pass
    return Conversation((("user", item.instruction), ("assistant", item.output)), item.input or "")


def _original_object(item: Item) -> dict[str, Any] | None:
    if item.original is None:
        return None
    obj = json.loads(item.original)
    return obj if isinstance(obj, dict) else None


def alpaca_record(item: Item) -> dict[str, Any]:
    """``{"instruction", "input", "output"}`` (+ ``system``, ``history``: LLaMA-Factory's alpaca
    columns) of the rated conversation; the stored text (a transcript in the instruction) when its
    turns do not fit that shape (a tool turn, two turns of one role in a row)."""
    return alpaca_fields(conversation(item)) or {
        "instruction": item.instruction, "input": item.input or "", "output": item.output}


def sharegpt_record(item: Item) -> dict[str, Any]:
    return sharegpt_fields(conversation(item))


def messages_record(item: Item) -> dict[str, Any]:
    return messages_fields(conversation(item))


def _score_fields(item: Item, scores: Scores | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"rank": item.rank, "s_model": item.s_model}
    if scores is not None:
        fields["s_sent"] = scores.s_sent.get(item.sample_id, {})
        fields["s_token"] = scores.s_token.get(item.sample_id, {})
    return fields


# --------------------------------------------------------------------------------------------
# Writing: every file goes through one `selectit.io.writer.Writer` (checked first, renamed at the end)
# --------------------------------------------------------------------------------------------
def _dump(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _write_json_list(w: Writer, out: Path, texts: Sequence[str], layout: dict[str, Any] | None = None) -> None:
    """A JSON list of already-serialised records, in the container style of `layout` (the source
    file's whitespace between ``[``, records and ``]``), else ``json.dumps(indent=2)``'s."""
    layout = layout or {}
    open_ws = layout.get("open", "\n  ")
    sep = layout.get("sep", ",\n  ")
    close_ws = layout.get("close", "\n")
    end = layout.get("end", "\n")
    w.stage_text(out, "[]" + end if not texts else "[" + open_ws + sep.join(texts) + close_ws + "]" + end)


def _write_lines(w: Writer, out: Path, texts: Sequence[str], ending: str = "\n") -> None:
    def fill(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            for text in texts:
                fh.write(text + ending)

    w.stage(out, fill)


def _indented(record: dict[str, Any]) -> str:
    """A record as it sits in a ``json.dumps(records, indent=2)`` list."""
    return json.dumps(record, ensure_ascii=False, indent=2).replace("\n", "\n  ")


def _arrow_table(rows: list[dict[str, Any]], layout: dict[str, Any] | None = None):  # noqa: ANN202
    import pyarrow as pa

    schema = None
    if layout and layout.get("schema"):
        schema = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(layout["schema"])))
    if schema is not None:
        extra = [k for k in (rows[0] if rows else {}) if k not in schema.names]
        if extra:  # --with-scores columns: appended to the source schema
            inferred = pa.Table.from_pylist([{k: r[k] for k in extra} for r in rows]).schema
            schema = pa.schema(list(schema) + list(inferred))
        return pa.Table.from_pylist(rows, schema=schema)
    return pa.Table.from_pylist(rows)


def _write_parquet(w: Writer, out: Path, rows: list[dict[str, Any]], layout: dict[str, Any] | None = None) -> None:
    import pyarrow.parquet as pq

    table = _arrow_table(rows, layout) if rows or layout else _empty_alpaca()
    w.stage(out, lambda tmp: pq.write_table(table, tmp))


def _write_arrow(w: Writer, out: Path, rows: list[dict[str, Any]], layout: dict[str, Any] | None) -> None:
    import pyarrow as pa

    table = _arrow_table(rows, layout)

    def fill(tmp: Path) -> None:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)

    w.stage(out, fill)


def _write_csv(w: Writer, out: Path, rows: list[dict[str, Any]], layout: dict[str, Any], delimiter: str) -> None:
    import csv

    columns = list(layout.get("columns") or (rows[0].keys() if rows else []))
    extra = [k for k in (rows[0] if rows else {}) if k not in columns]

    def fill(tmp: Path) -> None:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, delimiter=delimiter, lineterminator=layout.get("newline", "\n"))
            writer.writerow(columns + extra)
            for row in rows:
                writer.writerow([_csv_cell(row.get(c)) for c in columns + extra])

    w.stage(out, fill)


def _csv_cell(value: Any) -> Any:
    return _dump(value) if isinstance(value, (dict, list)) else ("" if value is None else value)


def _empty_alpaca():  # noqa: ANN202
    import pyarrow as pa

    return pa.table({c: pa.array([], pa.string()) for c in ("instruction", "input", "output")})


def is_saved_dataset(path: Path) -> bool:
    """A `save_to_disk` directory (its `state.json` is there), not reached through a symlink."""
    return not path.is_symlink() and path.is_dir() and (path / "state.json").is_file()


def _saved_files(path: Path) -> list[str]:
    """The file names a saved dataset consists of (its state.json's data files and its metadata)."""
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        names = [f["filename"] for f in state.get("_data_files", []) if isinstance(f, dict)]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        names = []
    return [n for n in names if isinstance(n, str) and "/" not in n] + ["state.json", "dataset_info.json"]


def _plan_hf_dataset(w: Writer, out: Path, rows: list[dict[str, Any]], layout: dict[str, Any] | None,
                     staging: Path) -> list[str]:
    """Save the dataset into `staging`, then check each of its files' targets in `out`; their names.

    An existing `out` must be a saved dataset; only its own files are replaced (others in the
    directory stay), and only when selectit wrote them for the same entry (or --overwrite).
    """
    from selectit.io.readers import datasets_offline

    if out.is_symlink():
        raise ExportError(f"{out} is a symbolic link; give the saved dataset's real directory (or a new one) "
                          f"for --format hf-dataset")
    if out.exists() and not is_saved_dataset(out):
        raise ExportError(f"{out} exists and is not a saved dataset; give a new directory, or end --out with "
                          f"'/' to write the dataset into a folder inside it")
    hf = datasets_offline()
    table = _arrow_table(rows, layout) if rows or layout else _empty_alpaca()
    hf.Dataset(table).save_to_disk(str(staging / "ds"))
    if not out.exists():
        w.new_dir(out)
    new = sorted(p.name for p in (staging / "ds").iterdir() if p.is_file())
    for name in new:
        w.plan(out / name)
    if out.exists():
        for name in _saved_files(out):
            if name not in new:
                w.plan_stale(out / name)
    return new


def _stage_hf_dataset(w: Writer, out: Path, names: list[str], staging: Path) -> None:
    for name in names:
        w.stage(out / name, lambda tmp, n=name: os.replace(staging / "ds" / n, tmp))


def _resolve_original(items: Sequence[Item]) -> Source:
    """The one source container every item's original shares (else a clear error)."""
    missing = [i for i in items if i.original is None or i.source is None]
    if missing:
        raise ExportError(
            f"{len(missing)} of the {len(items)} selected samples have no kept original (ingested by an older "
            f"selectit, or stored directly); export a converted form instead, e.g. --format alpaca-json, "
            f"or ingest the file into a new dataset and select again"
        )
    containers = {i.source.container for i in items}  # type: ignore[union-attr]
    if len(containers) > 1:
        raise ExportError(
            f"the selected records come from files of different kinds ({', '.join(sorted(containers))}), so "
            f"there is no one original format; choose one with --format (jsonl, messages, sharegpt, …)"
        )
    first = items[0].source
    assert first is not None
    if first.container in ("parquet", "arrow", "hf-dir", "csv", "tsv"):
        layouts = {json.dumps({k: v for k, v in i.source.layout.items() if k != "shape"}, sort_keys=True)
                   for i in items}  # type: ignore[union-attr]
        if len(layouts) > 1:
            raise ExportError(
                f"the selected records come from {first.container} files with different columns, so they "
                f"cannot share one original table; choose a converted format with --format"
            )
    return first


def _original_rows(items: Sequence[Item], with_scores: bool, scores: Scores | None) -> list[dict[str, Any]]:
    rows = []
    for item in items:
        row = json.loads(item.original)  # type: ignore[arg-type]
        if with_scores:
            row.update(_score_fields(item, scores))
        rows.append(row)
    return rows


def _original_texts(items: Sequence[Item], with_scores: bool, scores: Scores | None) -> list[str]:
    if not with_scores:
        return [item.original for item in items]  # type: ignore[misc]  # the exact bytes as ingested
    return [_dump(row) for row in _original_rows(items, True, scores)]


#: The extension of each converted format's data file.
DATA_SUFFIX = {"alpaca-json": ".json", "jsonl": ".jsonl", "sharegpt": ".json", "messages": ".jsonl",
               "parquet": ".parquet"}


def file_stem(name: str) -> str:
    """A file name for an export entry: `name` with anything but letters, digits, ``.``, ``_`` and
    ``-`` replaced by ``_`` (never hidden, never empty).

    >>> file_stem("selective_alpaca"), file_stem("top 3/v1"), file_stem("..")
    ('selective_alpaca', 'top_3_v1', 'data')
    """
    import re

    stem = re.sub(r"[^\w.-]", "_", name).lstrip(".")
    return stem or "data"


@dataclass(frozen=True)
class Layout:
    """Where an export writes: the data file (or saved-dataset directory) and its card."""

    data: Path
    card: Path
    in_dir: bool  # --out was a directory: the files are named after the entry
    named: bool  # the user named the data file itself (it may be replaced)


def export_layout(out: Path, fmt: str, entry: str, source: Source | None = None, as_dir: bool = False) -> Layout:
    """The files an export of `entry` to `out` writes.

    `out` a file: that file and ``FILE.README.md``. `out` a directory (it exists, or ends with
    ``/``): ``DIR/<entry>.<ext>`` and ``DIR/<entry>.README.md``. A saved dataset (hf-dataset, or
    the original of a `save_to_disk` source) is the directory `out` itself, or ``DIR/<entry>/`` when
    `out` ends with ``/`` or is a directory that is not a saved dataset; its card is its README.md.
    """
    stem = file_stem(entry)
    if fmt == "hf-dataset" or (fmt == "original" and source is not None and source.container == "hf-dir"):
        inside = out.is_dir() and not out.is_symlink() and not is_saved_dataset(out)
        directory = out / stem if as_dir or inside else out
        return Layout(directory, directory / CARD_NAME, in_dir=directory != out, named=directory == out)
    if as_dir or out.is_dir():
        suffix = ORIGINAL_SUFFIX[source.container] if fmt == "original" and source is not None else DATA_SUFFIX[fmt]
        return Layout(out / (stem + suffix), out / (stem + ".README.md"), in_dir=True, named=False)
    return Layout(out, out.with_name(out.name + ".README.md"), in_dir=False, named=True)


def _stage_records(w: Writer, path: Path, fmt: str, items: Sequence[Item], source: Source | None,
                   with_scores: bool, scores: Scores | None) -> None:
    """Stage the data file of a non-directory format."""
    if fmt == "original":
        assert source is not None
        container = source.container
        if container == "json":
            texts = _original_texts(items, with_scores, scores)
            if with_scores and source.layout.get("open", "\n  ") == "\n  ":
                texts = [_indented(json.loads(t)) for t in texts]
            _write_json_list(w, path, texts, source.layout)
        elif container == "jsonl":
            _write_lines(w, path, _original_texts(items, with_scores, scores), source.layout.get("newline", "\n"))
        elif container == "parquet":
            _write_parquet(w, path, _original_rows(items, with_scores, scores), source.layout)
        elif container == "arrow":
            _write_arrow(w, path, _original_rows(items, with_scores, scores), source.layout)
        elif container in ("csv", "tsv"):
            _write_csv(w, path, _original_rows(items, with_scores, scores), source.layout,
                       "\t" if container == "tsv" else source.layout.get("delimiter", ","))
        else:  # pragma: no cover - every ingest container is listed above
            raise ExportError(f"cannot write {container} originals")
        return
    records = _shaped(items, fmt, with_scores, scores)
    if fmt in ("alpaca-json", "sharegpt"):
        _write_json_list(w, path, [_indented(r) for r in records])
    elif fmt in ("jsonl", "messages"):
        _write_lines(w, path, [_dump(r) for r in records])
    else:
        _write_parquet(w, path, _uniform(records))


#: The shape each converted format is read back in (an hf-dataset by its ``messages`` column).
_READ_AS = {"alpaca-json": "alpaca", "jsonl": "alpaca", "parquet": "alpaca", "sharegpt": "sharegpt",
            "messages": "messages", "hf-dataset": "messages"}
#: Alpaca's optional columns and their value on a record without them.
_ALPACA_OPTIONAL = {"system": "", "history": []}


def _shaped(items: Sequence[Item], fmt: str, with_scores: bool, scores: Scores | None) -> list[dict[str, Any]]:
    """The records of a converted format. Alpaca's ``system`` and ``history`` are on every record
    when one needs them (one schema per file, for `datasets`, pyarrow and LLaMA-Factory); every
    record carries its sample's ``content_hash`` when one of them would otherwise be read back as
    another sample (an Alpaca ``input`` merged into the user turn)."""
    shape: Callable[[Item], dict[str, Any]] = {
        "alpaca-json": alpaca_record, "jsonl": alpaca_record, "parquet": alpaca_record,
        "sharegpt": sharegpt_record, "messages": messages_record, "hf-dataset": _hf_record,
    }[fmt]
    records = [shape(item) for item in items]
    if _READ_AS[fmt] == "alpaca" or fmt == "hf-dataset":
        needed = {k for r in records for k in _ALPACA_OPTIONAL if k in r}
        records = [{**{k: r[k] for k in ("instruction", "input", "output")},
                    **{k: r.get(k, _ALPACA_OPTIONAL[k]) for k in _ALPACA_OPTIONAL if k in needed},
                    **r} for r in records]
    hashes = [digest(item.instruction, item.input or "", item.output) for item in items]
    if any(comes_back_as(r, _READ_AS[fmt]) != h for r, h in zip(records, hashes)):
        for record, h in zip(records, hashes):
            record[HASH_FIELD] = h
    if with_scores:
        for record, item in zip(records, items):
            record.update(_score_fields(item, scores))
    return records


def write_export(
    items: Sequence[Item],
    out: str | os.PathLike[str],
    fmt: str = "alpaca-json",
    *,
    entry: str = "data",
    with_scores: bool = False,
    scores: Scores | None = None,
    card: dict[str, Any] | None = None,
    llamafactory: str | None = None,
    overwrite: bool = False,
    protect: Sequence[str | os.PathLike[str]] = (),
    sources: Sequence[tuple[str, str]] = (),
) -> ExportResult:
    """Write `items` (best first) to `out` in `fmt`; the card and the LLaMA-Factory entry beside it.

    `out` is a file, or a directory that receives ``<entry>.<ext>`` (see `export_layout`).
    `card` is the provenance (see `card_text`); `llamafactory` is the name under which the entry
    is merged into ``dataset_info.json`` beside the data. `protect`: files never written (the
    store's); `sources`: (path, sha256) of ingested files, replaced only with `overwrite`.
    Every target is checked before anything is written, and all are renamed into place at the
    end (`selectit.writer`): an error leaves every file as it was.
    """
    import shutil

    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    if not str(out).strip():
        raise ExportError("--out is empty; give the file (or the directory, ending with '/') to export to")
    as_dir = str(out).endswith(("/", os.sep))
    out = Path(out)
    source = _resolve_original(items) if fmt == "original" and items else None
    if fmt == "original" and not items:
        fmt = "alpaca-json"  # nothing selected: an empty list in the default converted form
    written = fmt if source is None else source.format
    layout = export_layout(out, fmt, llamafactory or entry, source, as_dir)
    is_dir = fmt == "hf-dataset" or (source is not None and source.container == "hf-dir")
    if llamafactory is not None and is_dir:
        raise ExportError("--llamafactory needs a data file (alpaca-json, jsonl, sharegpt, messages, parquet "
                          "or an original JSON/JSONL/Parquet/CSV file), not a dataset directory")
    if llamafactory is not None and source is not None and source.container == "arrow":
        raise ExportError("LLaMA-Factory reads json, jsonl, csv and parquet files; export the Arrow records "
                          "with --format parquet (or jsonl) for --llamafactory")
    # In a directory the files belong to the entry; a named FILE and its card belong to that file.
    owner = (llamafactory or entry) if layout.in_dir else f"--out {layout.data.name}"
    w = Writer(entry=owner, protect=[Path(p) for p in protect], overwrite=overwrite,
               refuse_named=_source_check(sources))
    if layout.in_dir and not out.exists():
        w.new_dir(out)
    elif layout.in_dir and (out.is_symlink() and not out.is_dir()):
        raise ExportError(f"{out} is not a directory; choose another --out")
    staging = None
    try:
        if is_dir:
            rows = _original_rows(items, with_scores, scores) if source is not None else _uniform(
                _shaped(items, fmt, with_scores, scores))
            parent = layout.data.parent if layout.data.parent.is_dir() else out.parent
            if not parent.is_dir():
                raise ExportError(f"the directory {str(parent)!r} does not exist; create it first")
            staging = Path(tempfile.mkdtemp(prefix=".selectit-staging-", dir=parent))
            names = _plan_hf_dataset(w, layout.data, rows, source.layout if source is not None else None, staging)
        else:
            w.plan(layout.data, named=layout.named)
        if card is not None:
            w.plan(layout.card)
        info = None
        current: dict[str, Any] = {}
        if llamafactory is not None:
            info = layout.data.parent / LLAMAFACTORY_INFO
            w.plan(info, shared=True, record=False)
            current = read_dataset_info(info)
        # Everything is checked: write.
        if is_dir:
            _stage_hf_dataset(w, layout.data, names, staging)  # type: ignore[arg-type]
        else:
            _stage_records(w, layout.data, fmt, items, source, with_scores, scores)
        result = ExportResult(data=layout.data, format=written, n=len(items))
        if card is not None:
            w.stage_text(layout.card, card_text(card, layout.data, written, len(items), is_dir=is_dir))
            result.card = layout.card
        if info is not None:
            staged = w.targets[w._given[layout.data]].staged
            entry_json = llamafactory_entry(layout.data, written if source is None else "original", source,
                                            content=staged)
            current[llamafactory] = entry_json  # type: ignore[index]
            w.stage_text(info, json.dumps(current, indent=2, ensure_ascii=False) + "\n")
            result.dataset_info = info
        w.commit()
    finally:
        w.abort()
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return result


def in_memory_dataset(items: Sequence[Item], *, with_scores: bool = False, scores: Scores | None = None,
                      card: dict[str, Any] | None = None) -> Any:
    """`items` as a `datasets.Dataset` with the columns of an ``hf-dataset`` export (nothing written);
    its ``info.description`` is the dataset card when `card` (the provenance) is given."""
    from selectit.io.readers import datasets_offline

    hf = datasets_offline()
    rows = _uniform(_shaped(items, "hf-dataset", with_scores, scores))
    table = _arrow_table(rows) if rows else _empty_alpaca()
    info = hf.DatasetInfo(description=card_text(card, Path("<in memory>"), "hf-dataset", len(items), is_dir=True)
                          if card is not None else "")
    return hf.Dataset(table, info=info)


def _source_check(sources: Sequence[tuple[str, str]]) -> Callable[[Path], str | None]:
    """Whether a named target is one of the ingested source files (by path, or by name and content)."""
    def check(real: Path) -> str | None:
        for path, sha256 in sources:
            if Path(os.path.realpath(path)) == real or (
                    Path(path).name == real.name and real.is_file() and sha256_file(real) == sha256):
                return f"the ingested source file of this dataset ({Path(path).name})"
        return None

    return check


def _hf_record(item: Item) -> dict[str, Any]:
    record: dict[str, Any] = dict(alpaca_record(item))
    record.setdefault("system", "")
    record["messages"] = messages_record(item)["messages"]
    return record


def _uniform(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every record with the same keys (Arrow wants one schema): missing optional text → "",
    a missing history → []."""
    keys: dict[str, None] = {}
    for r in records:
        keys.update(dict.fromkeys(r))
    return [{k: r.get(k, _ALPACA_OPTIONAL.get(k, "")) for k in keys} for r in records]


# --------------------------------------------------------------------------------------------
# LLaMA-Factory's dataset_info.json
# --------------------------------------------------------------------------------------------
def llamafactory_entry(path: Path, fmt: str, source: Source | None = None, *,
                       content: Path | None = None) -> dict[str, Any]:
    """The `dataset_info.json` entry LLaMA-Factory needs to load `path` (its documented schema:
    file_name, file_sha1, formatting ∈ alpaca/sharegpt, columns, tags). `content`: where the
    bytes are now (the staged file, before it is renamed to `path`)."""
    name, suffix = path.name, path.suffix
    path = content or path
    sha1 = hashlib.sha1(path.read_bytes()).hexdigest()
    entry: dict[str, Any] = {"file_name": name, "file_sha1": sha1}
    shape = fmt
    if fmt == "original":
        assert source is not None
        if source.container in ("arrow", "hf-dir"):
            raise ExportError("LLaMA-Factory reads json, jsonl, csv and parquet files; export the Arrow records "
                              "with --format parquet (or jsonl) for --llamafactory")
        shape = source.format if source.format in ("sharegpt", "messages") else "alpaca"
    if shape in ("sharegpt", "messages"):
        key = "conversations" if shape == "sharegpt" else "messages"
        entry["formatting"] = "sharegpt"
        entry["columns"] = {"messages": key}
        records = _json_records(path)
        if any(isinstance(r.get("system"), str) for r in records):
            entry["columns"]["system"] = "system"
        if shape == "messages":
            entry["tags"] = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                             "assistant_tag": "assistant", "observation_tag": "tool", "system_tag": "system"}
        else:
            seen = {str(t.get("from")) for r in records for t in r.get(key, []) if isinstance(t, dict)}
            tags = {}
            if "human" not in seen and "user" in seen:
                tags["user_tag"] = "user"
            if "gpt" not in seen and "assistant" in seen:
                tags["assistant_tag"] = "assistant"
            if tags:
                entry["tags"] = tags
    else:
        cmap = dict(source.column_map) if (fmt == "original" and source is not None) else {}
        columns = {"prompt": cmap.get("instruction", "instruction"), "query": cmap.get("input", "input"),
                   "response": cmap.get("output", "output")}
        names = _column_names(path, suffix)
        for optional in ("system", "history"):  # LLaMA-Factory's alpaca columns, when the file has them
            if cmap.get(optional, optional) in names:
                columns[optional] = cmap.get(optional, optional)
        if fmt == "original" and columns["query"] not in names:
            del columns["query"]
        entry["columns"] = columns
    return entry


def _json_records(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return [r for r in json.loads(text) if isinstance(r, dict)]
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _column_names(path: Path, suffix: str | None = None) -> set[str]:
    suffix = path.suffix if suffix is None else suffix
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return set(pq.ParquetFile(path).schema_arrow.names)
    if suffix in (".csv", ".tsv"):
        import csv

        with path.open(encoding="utf-8", newline="") as fh:
            return set(next(csv.reader(fh, delimiter="\t" if suffix == ".tsv" else ","), []))
    names: set[str] = set()
    for record in _json_records(path):
        names.update(record)
    return names


def read_dataset_info(info: Path) -> dict[str, Any]:
    """The entries of the `dataset_info.json` at `info` ({} when there is none): a clear error when
    it is not a UTF-8 JSON object, before anything is written."""
    if not info.exists():
        return {}
    try:
        current = json.loads(info.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ExportError(f"{info} is not UTF-8 text (byte {exc.start}); fix or remove it, then export again "
                          f"with --llamafactory") from None
    except json.JSONDecodeError as exc:
        raise ExportError(f"{info} is not valid JSON ({exc.msg}, line {exc.lineno}); fix or remove it, "
                          f"then export again with --llamafactory") from None
    except OSError as exc:
        raise ExportError(f"cannot read {info}: {exc.strerror}") from None
    if not isinstance(current, dict):
        raise ExportError(f"{info} is not a JSON object of datasets; fix or remove it")
    return current


# --------------------------------------------------------------------------------------------
# The dataset card
# --------------------------------------------------------------------------------------------
def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a double-quoted YAML string


def to_yaml(value: Any, indent: int = 0) -> list[str]:
    """Block-style YAML of dicts, lists and scalars (strings double-quoted, so always safe)."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{key}:")
                lines.extend(to_yaml(v, indent + 2))
            else:
                lines.append(f"{pad}{key}: {_yaml_scalar(v) if not isinstance(v, (dict, list)) else ('{}' if isinstance(v, dict) else '[]')}")
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, (dict, list)) and v:
                sub = to_yaml(v, indent + 2)
                lines.append(f"{pad}- {sub[0].lstrip()}")
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {_yaml_scalar(v)}")
    else:
        lines.append(pad + _yaml_scalar(value))
    return lines


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "n>10M"


def card_text(provenance: dict[str, Any], data: Path, fmt: str, n: int, *, is_dir: bool = False) -> str:
    """The dataset card: YAML front matter (Hub metadata + the `selectit` provenance) and a summary."""
    name = provenance.get("name") or data.stem
    front = {
        "pretty_name": name,
        "tags": ["selectit", "instruction-tuning", "data-selection"],
        "size_categories": [_size_category(n)],
        "task_categories": ["text-generation"],
        "configs": [{"config_name": "default", "data_files": data.name}] if not is_dir else [],
        "selectit": provenance | {"export_format": fmt, "data_file": data.name},
    }
    if not front["configs"]:
        del front["configs"]
    lines = ["---", *to_yaml(front), "---", "", f"# {name}", ""]
    p = provenance
    criterion = p.get("criterion") or {}
    how = ("drawn as a control (not by SelectIT) from the samples that" if criterion.get("control")
           else "selected by")
    lines += [
        f"{n} records {how} [SelectIT](https://arxiv.org/abs/2402.16705) self-reflection "
        f"{'ranks ' if criterion.get('control') else ''}"
        f"(selectit {p.get('selectit_version', '?')}, {p.get('created_at', '?')}), written as `{fmt}` to `{data.name}`.",
        "",
        f"- dataset: `{p.get('dataset')}` ({p.get('counts', {}).get('dataset_samples', '?')} samples, "
        f"{p.get('counts', {}).get('rankable', '?')} rankable)",
        f"- kept: {p.get('counts', {}).get('selected', n)} ({_criterion_text(criterion)})",
        f"- α = {p.get('alpha')}, formula `{p.get('formula')}`, fusion engine {p.get('engine')}",
        f"- prompt set `{p.get('prompt_set', {}).get('name') if isinstance(p.get('prompt_set'), dict) else p.get('prompt_set')}`",
    ]
    for m in p.get("models", []):
        lines.append(f"- model `{m.get('name')}` (version {m.get('id')}, {m.get('dtype')}, fingerprint "
                     f"{str(m.get('fingerprint', ''))[:12]}, θ {m.get('theta')})")
    for f in p.get("source_files", []):
        where = f" at `{f['path']}`" if f.get("path") else ""
        lines.append(f"- source file `{f.get('file')}`{where} ({f.get('format')}, sha256 {f.get('sha256', '')})")
    lines.append("")
    return "\n".join(lines)


def _criterion_text(criterion: dict[str, Any]) -> str:
    if criterion.get("control") == "random":
        size = f"{criterion['top']:g} share" if criterion.get("top") is not None else f"{criterion.get('top_n')}"
        return f"control: random {size} of the rankable samples, seed {criterion.get('seed')}"
    if criterion.get("control") == "length":
        size = f"top {criterion['top']:g} share" if criterion.get("top") is not None else f"top {criterion.get('top_n')}"
        return f"control: the longest responses, {size} of the rankable samples"
    if criterion.get("top") is not None:
        return f"top {criterion['top']:g} share"
    if criterion.get("top_n") is not None:
        return f"top {criterion['top_n']}"
    if criterion.get("min_score") is not None:
        return f"S_model >= {criterion['min_score']:g}"
    return "all rankable"


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------------------------
# From the curation database: a frozen selection or the live top of a dataset
# --------------------------------------------------------------------------------------------
def _chunks(values: Sequence[int], size: int = 5000) -> Iterator[Sequence[int]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def _memberships(conn: Any, dataset_id: int, sample_ids: Sequence[int]) -> dict[int, tuple[int, str | None, int | None]]:
    """sample id → (position, original, ingest id) of its membership in the dataset."""
    import sqlalchemy as sa

    from selectit.store.schema import DatasetSample as M

    found: dict[int, tuple[int, str | None, int | None]] = {}
    for chunk in _chunks(list(sample_ids)):
        rows = conn.execute(sa.select(M.sample_id, M.position, M.original, M.ingest_id)
                            .where(M.dataset_id == dataset_id, M.sample_id.in_(chunk)))
        found.update({sid: (pos, orig, ing) for sid, pos, orig, ing in rows})
    return found


def _sources(conn: Any, ids: set[int]) -> dict[int, Source]:
    import sqlalchemy as sa

    from selectit.store.schema import Ingest

    rows = conn.execute(sa.select(Ingest.id, Ingest.path, Ingest.sha256, Ingest.format, Ingest.container, Ingest.layout,
                  Ingest.column_map).where(Ingest.id.in_(sorted(ids))))
    return {r[0]: Source(r[0], r[1], r[2], r[3], r[4], r[5] or {}, r[6] or {}) for r in rows}


def _source_files(conn: Any, dataset_id: int, paths: bool = False) -> list[dict[str, Any]]:
    """The dataset's ingested files for the card: file name and sha256 (the full path with `paths`)."""
    import sqlalchemy as sa

    from selectit.store.schema import Ingest

    rows = conn.execute(sa.select(Ingest.path, Ingest.sha256, Ingest.format, Ingest.n_read, Ingest.created_at)
                        .where(Ingest.dataset_id == dataset_id).order_by(Ingest.id))
    files = []
    for p, h, f, n, t in rows:
        record = {"file": Path(p).name or p, "sha256": h, "format": f, "records": n, "ingested_at": str(t)[:19]}
        if paths:
            record["path"] = p
        files.append(record)
    return files


def _ingested(conn: Any, dataset_id: int) -> list[tuple[str, str]]:
    """(path, sha256) of every file ingested into the dataset: an export replaces one only with --overwrite."""
    import sqlalchemy as sa

    from selectit.store.schema import Ingest

    return [(p, h) for p, h in conn.execute(sa.select(Ingest.path, Ingest.sha256).where(Ingest.dataset_id == dataset_id))]


def _model_rows(conn: Any, params: Any) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    from selectit.store.schema import LLM

    by_id = {m.id: m for m in conn.execute(sa.select(LLM.id, LLM.name, LLM.source, LLM.fingerprint, LLM.dtype,
                                                       LLM.n_params).where(LLM.id.in_([m.model_id for m in params.models])))}
    out = []
    for m in params.models:
        row = by_id.get(m.model_id)
        out.append({"name": m.name, "id": m.model_id, "source": row.source if row else None,
                    "fingerprint": row.fingerprint if row else None, "dtype": row.dtype if row else None,
                    "n_params": row.n_params if row else None, "theta": m.theta, "share": m.share})
    return out


def _prompt_rows(conn: Any, params: Any) -> dict[str, Any]:
    import sqlalchemy as sa

    from selectit.store.schema import Prompt

    ids = [p.prompt_id for p in params.prompts]
    by_id = {p.id: p for p in conn.execute(sa.select(Prompt.id, Prompt.position, Prompt.layout, Prompt.scale,
                                                       Prompt.text_hash).where(Prompt.id.in_(ids)))}
    return {"name": params.prompt_set, "prompts": [
        {"version": p.prompt_id, "position": p.position, "layout": by_id[p.prompt_id].layout if p.prompt_id in by_id else None,
         "scale": p.scale, "text_hash": by_id[p.prompt_id].text_hash if p.prompt_id in by_id else None}
        for p in params.prompts]}


def _scores(db_url: str | None, params: Any, sample_ids: Sequence[int]) -> Scores:
    """S_sent per model and S_token per (model, prompt position) under exactly `params`' models and prompts."""
    import pyarrow as pa

    from selectit.fusion import views as fusion

    con = fusion.connect_pinned(db_url, params)
    try:
        con.execute("SET threads = 1")  # one summation order: the same bytes on every export
        con.register("export_ids", pa.table({"sample_id": pa.array(list(sample_ids), pa.int64())}))
        s_sent: dict[int, dict[str, float]] = {}
        for sid, model, value in con.execute(
                "SELECT s.sample_id, s.model, s.s_sent FROM sentence_scores s JOIN export_ids USING (sample_id) "
                "ORDER BY s.sample_id, s.model").fetchall():
            s_sent.setdefault(sid, {})[model] = value
        s_token: dict[int, dict[str, dict[str, float]]] = {}
        for sid, model, position, value in con.execute(
                "SELECT t.sample_id, t.model, t.position, t.s_token FROM token_scores t JOIN export_ids USING (sample_id) "
                "ORDER BY t.sample_id, t.model, t.position").fetchall():
            s_token.setdefault(sid, {}).setdefault(model, {})[f"p{position}"] = value
    finally:
        con.close()
    return Scores(s_sent, s_token)


def export_selection(
    engine: Any,
    db_url: str | None,
    out: str | os.PathLike[str] | None,
    *,
    selection: str | None = None,
    dataset: str | None = None,
    fmt: str | None = None,
    order: str = "rank",
    with_scores: bool = False,
    llamafactory: bool | str | None = False,
    card: bool = True,
    top: float | None = None,
    top_n: int | None = None,
    min_score: float | None = None,
    alpha: float = 0.2,
    formula: str = "paper",
    weights: dict[str, float] | None = None,
    models: list[str] | None = None,
    prompt_set: str | None = None,
    overwrite: bool = False,
    card_paths: bool = False,
    require_complete: bool = False,
) -> ExportResult | Any:
    """Export a frozen `selection`, or the current top of `dataset`'s ranking, to `out`; with `out`
    None and `fmt` ``hf-dataset``, return it as a `datasets.Dataset` in memory (`in_memory_dataset`).

    `fmt` None: ``original`` when every selected record kept its original (and they share one kind
    of file), else ``alpaca-json`` (`ExportResult.note` says why). `order`: ``rank`` (best first)
    or ``dataset`` (the order of the ingested files). `overwrite`: replace files the export did not
    write for this entry (never the store's). `card_paths`: the card records the sources' full
    paths (default: file name and sha256). `require_complete`: refuse a partly scored dataset
    (else `ExportResult.warning` says how much of it is rankable).
    """
    import duckdb
    import sqlalchemy as sa

    from selectit import __version__
    from selectit.fusion import selection as sel
    from selectit.fusion import views as fusion
    from selectit.store.schema import Dataset, DatasetSample, Selection, SelectionSample

    if out is None and fmt != "hf-dataset":
        raise ExportError("give the file (or the directory) to export to; only format='hf-dataset' can be "
                          "returned in memory without one")
    if out is None and llamafactory not in (False, None):
        raise ExportError("llamafactory needs a data file beside dataset_info.json; give out")
    if out is not None and not str(out).strip():
        raise ExportError("--out is empty; give the file (or the directory, ending with '/') to export to")
    if (selection is None) == (dataset is None):
        raise ExportError("give either --selection NAME (a frozen selection) or --dataset D (the current ranking)")
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    if order not in ("rank", "dataset"):
        raise ExportError(f"--order must be rank or dataset, not {order!r}")
    warning = None
    if selection is not None:
        with engine.connect() as conn:
            row = conn.execute(sa.select(Selection.id, Selection.dataset_id, Selection.params)
                               .where(Selection.name == selection)).first()
            if row is None:
                names = conn.execute(sa.select(Selection.name).order_by(Selection.name)).scalars().all()
                raise NoSuchSelection.named(selection, names)
            selection_id, dataset_id, raw_params = row
            ranked = conn.execute(sa.select(SelectionSample.rank, SelectionSample.sample_id, SelectionSample.score)
                                  .where(SelectionSample.selection_id == selection_id)
                                  .order_by(SelectionSample.rank)).all()
            dataset = conn.execute(sa.select(Dataset.name).where(Dataset.id == dataset_id)).scalar_one()
        params = fusion.Params.from_json(raw_params)
        criterion = raw_params.get("criterion") or {}
        n_rankable = raw_params.get("n_rankable")
    else:
        criterion_obj = sel.Criterion.or_default(top=top, top_n=top_n, min_score=min_score)
        con = fusion.connect(db_url, alpha=alpha, formula=formula, models=models, prompt_set=prompt_set,
                             weights=weights)
        try:
            params = fusion.require_scoring_setup(con)
            n_rankable = sel.rank_dataset(con, dataset)
            warning = sel.partial_warning(fusion.coverage(con, dataset), require_complete)
            ranked = [(r.rank, r.sample_id, r.s_model) for r in sel.chosen(con, criterion_obj)]
            dataset_id = fusion.dataset_id(con, dataset)
        finally:
            con.close()
        criterion = criterion_obj.as_json()
    ids = [sid for _, sid, _ in ranked]
    with engine.connect() as conn:
        from selectit.store.schema import Sample

        texts: dict[int, tuple[str, str, str]] = {}
        for chunk in _chunks(ids):
            for sid, i, n, o in conn.execute(sa.select(Sample.id, Sample.instruction, Sample.input, Sample.output)
                                             .where(Sample.id.in_(chunk))):
                texts[sid] = (i, n or "", o)
        members = _memberships(conn, dataset_id, ids)
        sources = _sources(conn, {m[2] for m in members.values() if m[2] is not None})
        ingested = _ingested(conn, dataset_id)
        n_samples = conn.execute(sa.select(sa.func.count()).select_from(DatasetSample)
                                 .where(DatasetSample.dataset_id == dataset_id)).scalar_one()
        provenance = {
            "name": selection or dataset,
            "selection": selection,
            "dataset": dataset,
            "source_files": _source_files(conn, dataset_id, card_paths),
            "models": _model_rows(conn, params),
            "prompt_set": _prompt_rows(conn, params),
            "alpha": params.alpha,
            "formula": params.formula,
            "engine": f"duckdb {duckdb.__version__}",
            "tie_rule": fusion.TIE_RULE,
            "criterion": criterion,
            "counts": {"dataset_samples": int(n_samples), "rankable": n_rankable, "selected": len(ranked)},
            "selectit_version": __version__,
            "created_at": now_utc(),
        }
    items = []
    for rank, sid, score in ranked:
        position, original, ingest_id = members.get(sid, (0, None, None))
        items.append((position, Item(rank, sid, *texts[sid], float(score), original,
                                     sources.get(ingest_id) if ingest_id is not None else None)))
    if order == "dataset":
        items.sort(key=lambda pair: pair[0])
    chosen_items = [item for _, item in items]
    note = None
    if fmt is None:
        try:
            _resolve_original(chosen_items) if chosen_items else None
            fmt = "original"
        except ExportError as exc:
            fmt, note = "alpaca-json", f"wrote alpaca-json: {exc}"
    scores = _scores(db_url, params, ids) if with_scores else None
    if out is None:
        return in_memory_dataset(chosen_items, with_scores=with_scores, scores=scores,
                                 card=provenance if card else None)
    name = llamafactory if isinstance(llamafactory, str) and llamafactory else (selection or dataset)
    assert name is not None
    result = write_export(chosen_items, out, fmt, entry=name, with_scores=with_scores, scores=scores,
                          card=provenance if card else None,
                          llamafactory=name if llamafactory not in (False, None) else None,
                          overwrite=overwrite, protect=db.store_files(db_url), sources=ingested)
    result.note = note
    result.warning = warning
    return result
