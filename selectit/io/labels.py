"""Human labels for an audit: a file of preferences or graded records, stored as samples of the
dataset `D.labels` so they are scored like any other (`selectit audit --dataset D --labels FILE`).

Two shapes, one per file (a JSON list or JSON Lines):

- **pairwise preferences**: ``{"prompt": …, "chosen": …, "rejected": …}`` (an optional ``input``):
  the prompt with each response is one sample; the figure is the share of pairs whose chosen
  response scores higher (ties half);
- **per-sample labels**: a record (``instruction``, optional ``input``, ``output``; or ``prompt`` and
  ``response``) plus a numeric ``label`` (higher = better); the figure is Spearman ρ of score and label.

The samples are stored once like any other (a record already scored costs nothing) and are the
members of ``<D>.labels``, which no other dataset includes; a later file replaces its members.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from selectit.errors import SelectitError
from selectit.io.audit import Twin, _store_samples
from selectit.io.records import canonical, digest
from selectit.store import db, lookups
from selectit.store.schema import Dataset, DatasetSample

SUFFIX = ".labels"


class LabelsError(SelectitError):
    """The labels file cannot be read; nothing was stored."""


@dataclass(frozen=True)
class LabelSet:
    """What `make_labels` stored: the labels dataset, and the pairs or labelled samples by sample id."""

    dataset: str
    name: str
    path: str
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (chosen, rejected) sample ids
    labels: list[tuple[int, float]] = field(default_factory=list)  # (sample id, label)
    lengths: dict[int, int] = field(default_factory=dict)  # sample id → response characters

    @property
    def kind(self) -> str:
        return "pairs" if self.pairs else "labels"


def _records(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelsError(f"cannot read the labels file {path}: {exc}") from None
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise LabelsError(f"{path} is neither a JSON list nor JSON Lines: {exc}") from None
    if not records or not all(isinstance(r, dict) for r in records):
        raise LabelsError(f"{path}: give a JSON list (or JSON Lines) of objects, e.g. "
                          '{"prompt": "…", "chosen": "…", "rejected": "…"}')
    return records


def _text(record: dict, key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise LabelsError(f"{where}: field {key!r} must be a non-empty string")
    return canonical(value)


def read_labels(path: str | Path) -> tuple[list[tuple[Twin, Twin]], list[tuple[Twin, float]]]:
    """The file's pairs ((chosen, rejected) samples) or labelled samples (sample, label); one of them is empty."""
    path = Path(path)
    pairs: list[tuple[Twin, Twin]] = []
    labelled: list[tuple[Twin, float]] = []
    for i, r in enumerate(_records(path), 1):
        where = f"{path}, record {i}"
        inp = canonical(r.get("input") or "") if isinstance(r.get("input") or "", str) else ""
        if "chosen" in r or "rejected" in r:
            prompt = _text(r, "prompt", where)
            pairs.append((Twin("chosen", prompt, inp, _text(r, "chosen", where), ""),
                          Twin("rejected", prompt, inp, _text(r, "rejected", where), "")))
        elif "label" in r:
            label = r["label"]
            if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
                raise LabelsError(f"{where}: 'label' must be a number, not {label!r}")
            ins = _text(r, "instruction" if "instruction" in r else "prompt", where)
            out = _text(r, "output" if "output" in r else "response", where)
            labelled.append((Twin("labelled", ins, inp, out, ""), float(label)))
        else:
            raise LabelsError(f"{where}: give 'prompt', 'chosen' and 'rejected' (a preference) or a record "
                              f"with a numeric 'label'")
    if pairs and labelled:
        raise LabelsError(f"{path} mixes preferences and labelled records; give one kind per file")
    return pairs, labelled


def make_labels(engine: Engine, dataset: str, path: str | Path) -> LabelSet:
    """Store the samples of the labels file `path` as the members of ``<dataset>.labels``."""
    pairs, labelled = read_labels(path)
    texts = [t for pair in pairs for t in pair] + [t for t, _ in labelled]
    hashes = [digest(t.instruction, t.input, t.output) for t in texts]
    name = dataset + SUFFIX
    with db.session_scope(engine) as session:
        lookups.dataset_id(session, dataset)  # an error naming the datasets when there is no such one
        conn = session.connection()
        ids = _store_samples(conn, texts, hashes)
        found = session.scalars(sa.select(Dataset).where(Dataset.name == name)).one_or_none()
        source = f"selectit audit labels for {dataset}: {Path(path).name}"
        if found is None:
            found = Dataset(name=name, source=source)
            session.add(found)
            session.flush()
        elif not (found.source or "").startswith(f"selectit audit labels for {dataset}:"):
            raise LabelsError(f"a dataset named {name!r} exists and holds no labels of {dataset!r}; rename it first")
        found.source = source
        conn.execute(sa.delete(DatasetSample).where(DatasetSample.dataset_id == found.id))
        members = list(dict.fromkeys(ids[h] for h in hashes))
        conn.execute(sa.insert(DatasetSample), [dict(dataset_id=found.id, sample_id=sid, position=i)
                                               for i, sid in enumerate(members)])
    at = iter(ids[h] for h in hashes)
    pair_ids = [(next(at), next(at)) for _ in pairs]
    label_ids = [(next(at), label) for _, label in labelled]
    lengths = {ids[h]: len(t.output) for t, h in zip(texts, hashes)}
    return LabelSet(dataset, name, str(path), pair_ids, label_ids, lengths)
