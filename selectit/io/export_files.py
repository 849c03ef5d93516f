"""Writing selected records as files: each export format, the original containers and saved
`datasets` directories, with the dataset card and the LLaMA-Factory entry beside them.

`write_export` checks every target first and renames all files into place at the end (through one
`selectit.io.writer.Writer`); `in_memory_dataset` gives the hf-dataset columns as a
`datasets.Dataset` instead. Records are shaped by `selectit.io.records` from each item's kept
original; `selectit.io.export` gathers the items from the store.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectit.contract import EXPORT_FORMATS
from selectit.io.card import CARD_NAME, LLAMAFACTORY_INFO, card_text, llamafactory_entry, read_dataset_info
from selectit.io.records import HASH_FIELD, alpaca_fields, comes_back_as, digest, messages_fields, sharegpt_fields
from selectit.io.trainer import CONVERTED, conversation, fit
from selectit.io.writer import ExportError, Writer, sha256_file


#: The file name used inside an output directory, per format.
DATA_FILE = {"alpaca-json": "data.json", "jsonl": "data.jsonl", "sharegpt": "data.json",
             "messages": "data.jsonl", "parquet": "data.parquet"}
#: The container of each ingest format, when it is exported as the original.
ORIGINAL_SUFFIX = {"json": ".json", "jsonl": ".jsonl", "parquet": ".parquet", "csv": ".csv", "tsv": ".tsv",
                   "arrow": ".arrow", "hf-dir": ""}


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
    original_id: str | None = None  # the record's own id in its file (converted exports write it as ``id``)


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
    left_out: str | None = None  # the rows a converted export left out, trainers cannot read them (`Fit.warning`)


# --------------------------------------------------------------------------------------------
# Records in each shape
# --------------------------------------------------------------------------------------------
def alpaca_record(item: Item) -> dict[str, Any]:
    """``{"instruction", "input", "output"}`` (+ ``system``, ``history``: LLaMA-Factory's alpaca
    columns) of the rated conversation; the stored text (a transcript in the instruction) when its
    turns do not fit that shape (a tool turn, two turns of one role in a row)."""
    return alpaca_fields(conversation(item)) or {
        "instruction": item.instruction, "input": item.input or "", "output": item.output}


def sharegpt_record(item: Item) -> dict[str, Any] | None:
    return sharegpt_fields(conversation(item))


def messages_record(item: Item) -> dict[str, Any] | None:
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
    from selectit.io.hub import datasets_offline

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
    records = [shape(item) for item in items]  # never None: `write_export` left those items out (`fit`)
    if _READ_AS[fmt] == "alpaca" or fmt == "hf-dataset":
        needed = {k for r in records for k in _ALPACA_OPTIONAL if k in r}
        records = [{**{k: r[k] for k in ("instruction", "input", "output")},
                    **{k: r.get(k, _ALPACA_OPTIONAL[k]) for k in _ALPACA_OPTIONAL if k in needed},
                    **r} for r in records]
    hashes = [digest(item.instruction, item.input or "", item.output) for item in items]
    if any(comes_back_as(r, _READ_AS[fmt]) != h for r, h in zip(records, hashes)):
        for record, h in zip(records, hashes):
            record[HASH_FIELD] = h
    if any(item.original_id is not None for item in items):  # the source record's id: a row traces back
        records = [{**r, "id": item.original_id} for r, item in zip(records, items)]
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
    end (`selectit.io.writer`): an error leaves every file as it was.
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
    fitted = fit(items, fmt) if fmt in CONVERTED else None
    if fitted is not None:
        items = fitted.kept
        card = {**card, "trainer_shape": fitted.card()} if card is not None else None
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
        result = ExportResult(data=layout.data, format=written, n=len(items),
                              left_out=fitted.warning if fitted is not None else None)
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
    from selectit.io.hub import datasets_offline

    hf = datasets_offline()
    fitted = fit(items, "hf-dataset")
    items = fitted.kept
    if card is not None:
        card = {**card, "trainer_shape": fitted.card()}
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
    messages = messages_record(item)
    assert messages is not None  # `fit` left out the items without trainer turns
    record["messages"] = messages["messages"]
    return record


def _uniform(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every record with the same keys (Arrow wants one schema): missing optional text → "",
    a missing history → []."""
    keys: dict[str, None] = {}
    for r in records:
        keys.update(dict.fromkeys(r))
    return [{k: r.get(k, _ALPACA_OPTIONAL.get(k, "")) for k in keys} for r in records]
