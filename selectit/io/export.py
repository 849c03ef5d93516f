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

This module gathers what is exported from the store (the selection's samples, their originals and
files, the provenance, the scores); `selectit.io.export_files` writes the files and
`selectit.io.card` the card and the LLaMA-Factory entry.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from selectit.contract import EXPORT_FORMATS, valid_path
from selectit.errors import NoSuchSelection
from selectit.fusion.session import Fusion
from selectit.io.card import now_utc
from selectit.io.export_files import (  # noqa: F401 - re-exported: the export interface
    ExportError,
    ExportResult,
    Item,
    Scores,
    Source,
    _resolve_original,
    in_memory_dataset,
    write_export,
)
from selectit.ranking import DEFAULT_RANKING, Ranking
from selectit.store import db


# --------------------------------------------------------------------------------------------
# From the curation database: a frozen selection or the live top of a dataset
# --------------------------------------------------------------------------------------------
def _chunks(values: Sequence[int], size: int = 5000) -> Iterator[Sequence[int]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


def _memberships(conn: Any, dataset_id: int,
                 sample_ids: Sequence[int]) -> dict[int, tuple[int, str | None, int | None, str | None]]:
    """sample id → (position, original, ingest id, original id) of its membership in the dataset."""
    import sqlalchemy as sa

    from selectit.store.schema import DatasetSample as M

    found: dict[int, tuple[int, str | None, int | None, str | None]] = {}
    for chunk in _chunks(list(sample_ids)):
        rows = conn.execute(sa.select(M.sample_id, M.position, M.original, M.ingest_id, M.original_id)
                            .where(M.dataset_id == dataset_id, M.sample_id.in_(chunk)))
        found.update({sid: (pos, orig, ing, oid) for sid, pos, orig, ing, oid in rows})
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
                "SELECT s.sample_id, s.model, s.s_sent FROM fused_turns s JOIN export_ids USING (sample_id) "
                "ORDER BY s.sample_id, s.model").fetchall():
            s_sent.setdefault(sid, {})[model] = value
        s_token: dict[int, dict[str, dict[str, float]]] = {}
        for sid, model, position, value in con.execute(
                "SELECT t.sample_id, t.model, t.position, t.s_token FROM token_scores t JOIN export_ids USING (sample_id) "
                "WHERE t.turn = 0 ORDER BY t.sample_id, t.model, t.position").fetchall():
            s_token.setdefault(sid, {}).setdefault(model, {})[f"p{position}"] = value
    finally:
        con.close()
    return Scores(s_sent, s_token)


def _audit(db_url: str | None, params: Any, dataset: str) -> dict[str, Any] | None:
    """The dataset's audit (`selectit audit`) under the export's models and prompts, for the card."""
    from selectit.fusion import audit
    from selectit.fusion import views as fusion

    con = fusion.connect_pinned(db_url, params)
    try:
        return audit.summary(con, dataset)
    finally:
        con.close()


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
    ranking: Ranking = DEFAULT_RANKING,
    top: float | None = None,
    top_n: int | None = None,
    min_score: float | None = None,
    overwrite: bool = False,
    card_paths: bool = False,
    require_complete: bool = False,
) -> ExportResult | Any:
    """Export a frozen `selection`, or the current top of `dataset`'s ranking, to `out`; with `out`
    None and `fmt` ``hf-dataset``, return it as a `datasets.Dataset` in memory (`in_memory_dataset`).

    `ranking` and `top`/`top_n`/`min_score` choose the current top of `dataset`.
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
    if out is not None and not str(valid_path(out, "--out")).strip():
        raise ExportError("--out is empty; give the file (or the directory, ending with '/') to export to")
    if (selection is None) == (dataset is None):
        raise ExportError("give either --selection NAME (a frozen selection) or --dataset D (the current ranking)")
    if not (llamafactory is None or isinstance(llamafactory, (bool, str))):  # 5 would count as True
        raise ExportError(f"--llamafactory takes the entry's name (a string) or nothing; got {llamafactory!r}")
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    if order not in ("rank", "dataset"):
        raise ExportError(f"--order must be rank or dataset, not {order!r}")
    warning = None
    if selection is not None:
        with db.reading(engine).connect() as conn:  # a read: it never waits for a writer's lock
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
        with Fusion(db_url, ranking) as f:
            found = f.rank(dataset, require_complete=require_complete)
            params, n_rankable, warning = found.params, found.n_rankable, found.warning
            ranked = [(r.rank, r.sample_id, r.s_model) for r in f.chosen(criterion_obj)]
            dataset_id = fusion.dataset_id(f.con, dataset)
        criterion = criterion_obj.as_json()
    ids = [sid for _, sid, _ in ranked]
    with db.reading(engine).connect() as conn:  # a read: it never waits for a writer's lock
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
    audited = _audit(db_url, params, dataset)
    if audited is not None:  # the card says how the ranking did against known-bad twins
        provenance["audit"] = audited
    items = []
    for rank, sid, score in ranked:
        position, original, ingest_id, original_id = members.get(sid, (0, None, None, None))
        items.append((position, Item(rank, sid, *texts[sid], float(score), original,
                                     sources.get(ingest_id) if ingest_id is not None else None, original_id)))
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
