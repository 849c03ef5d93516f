"""What an export writes beside its data: the dataset card (YAML front matter with the provenance,
then a summary) and the entry LLaMA-Factory needs in ``dataset_info.json``.

Pure functions of the provenance and the written file; `selectit.io.export_files` stages them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectit.io.writer import ExportError

if TYPE_CHECKING:
    from selectit.io.export_files import Source

CARD_NAME = "README.md"
LLAMAFACTORY_INFO = "dataset_info.json"


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
    # JSON lines end at \n only: str.splitlines() would also cut at U+2028, U+0085, \x0c, … that
    # json.dumps leaves raw inside a string (ensure_ascii=False), splitting a record in two.
    return [json.loads(line) for line in text.split("\n") if line.strip()]


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
    if p.get("audit"):
        a = p["audit"]
        lines.append(f"- audit (`selectit audit`, {a.get('drawn')} records drawn with seed {a.get('seed')} and "
                     f"{a.get('twins')} known-bad twins): {a.get('verdict')}")
    shape = p.get("trainer_shape") or {}
    for rule, done in (shape.get("reshaped") or {}).items():
        lines.append(f"- reshaped for trainers ({rule}): {done['records']} records, {done['rule']}")
    if (shape.get("left_out") or {}).get("rows"):
        lines.append(f"- left out (LLaMA-Factory and TRL cannot read them): {shape['left_out']['rows']} rows, "
                     f"ids {', '.join(shape['left_out']['ids'])}")
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
