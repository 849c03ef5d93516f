"""Embedding cells and the similar pairs they give (docs/dedup.md, `--diverse`).

An embedding is a cell like a rating: keyed by (sample, embedder), where the embedder is a
version of the producer — the rater model version (its weights' fingerprint and dtype), the
pooling (the mean of the last hidden states over the sample's tokens, L2-normalised), the token
limit and the floor of `similar_pairs` (`embedder_config`). `fill` computes the missing cells of
a dataset (or of every sample) and grows `similar_pairs` new × all, blockwise: each new vector
against every stored one, keeping the pairs with cosine >= the floor (0.8 by default).

torch and transformers are imported inside the functions that run the model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from selectit.store import db, lookups
from selectit.store.schema import LLM, Embedder, SampleEmbedding, SimilarPair, utcnow
from selectit.store.signatures import whole_text

#: Pairs at or above this cosine are stored; `--diverse τ` needs τ >= it.
FLOOR = 0.8
#: Tokens of a sample's text the model reads (the rest is cut: the start says what a sample is).
MAX_TOKENS = 512
POOLING = "mean of the last hidden states over the text's tokens, L2-normalised"
#: Vectors compared per block when pairs are grown (bounds the [block, all] cosine matrix).
BLOCK = 1024


@dataclass(frozen=True)
class EmbedResult:
    embedder_id: int
    model: str
    cells: int  # embeddings computed now
    pairs: int  # similar pairs added now


def embedder_config(model: LLM, max_tokens: int = MAX_TOKENS, floor: float = FLOOR) -> dict[str, Any]:
    """The producer's version: what changes the vectors (and the stored pairs)."""
    return {"model": model.name, "model_id": model.id, "fingerprint": model.fingerprint, "dtype": "float32",
            "pooling": POOLING, "max_tokens": max_tokens, "text": "instruction, input, output joined by newlines",
            "floor": floor}


def _embedder_id(conn: sa.Connection, config: dict[str, Any]) -> int:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    table = Embedder.__table__
    insert = (postgresql.insert if conn.engine.dialect.name == "postgresql" else sqlite.insert)(table)
    conn.execute(insert.values(config_hash=digest, config=config, created_at=utcnow())
                 .on_conflict_do_nothing(index_elements=[table.c.config_hash]))
    return int(conn.execute(sa.select(table.c.id).where(table.c.config_hash == digest)).scalar_one())


def fill(engine: Engine, *, model: str | None = None, dataset: str | None = None, device: str | None = None,
         batch_size: int = 16) -> EmbedResult:
    """Compute the missing embedding cells of `dataset`'s samples (or every sample) with the
    active version of `model` (default: the first active model by name), then the new × all pairs."""
    with db.session_scope(engine) as session:
        row = lookups.active_model(session, model) if model else lookups.active_models(session)[0]
        config = embedder_config(row)
        source, name = row.source, row.name
        expected = row.fingerprint
        ds_id = lookups.dataset_id(session, dataset) if dataset is not None else None
    with engine.begin() as conn:
        emb_id = _embedder_id(conn, config)
        sql = ("SELECT s.id, s.instruction, s.input, s.output FROM samples s LEFT JOIN sample_embeddings e "
               "ON e.sample_id = s.id AND e.embedder_id = :e WHERE e.sample_id IS NULL")
        params: dict[str, Any] = {"e": emb_id, "d": ds_id}
        if ds_id is not None:
            sql += " AND s.id IN (SELECT sample_id FROM dataset_samples WHERE dataset_id = :d)"
        todo = conn.execute(sa.text(sql + " ORDER BY s.id"), params).all()
    if not todo:
        return EmbedResult(emb_id, name, 0, 0)
    vectors = embed_texts(source, expected, [whole_text(r[1], r[2] or "", r[3]) for r in todo], device=device,
                          batch_size=batch_size, max_tokens=config["max_tokens"])
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    with engine.begin() as conn:
        table = SampleEmbedding.__table__
        now = utcnow()
        new = {r[0] for r in conn.execute(
            dialect.insert(table).on_conflict_do_nothing().returning(table.c.sample_id),
            [{"sample_id": r[0], "embedder_id": emb_id, "dim": int(v.shape[0]), "vector": v.astype("<f4").tobytes(),
              "created_at": now} for r, v in zip(todo, vectors)])}
    ids = [r[0] for r in todo if r[0] in new]
    return EmbedResult(emb_id, name, len(ids), grow_pairs(engine, emb_id, ids, config["floor"]))


def grow_pairs(engine: Engine, embedder_id: int, new_ids: list[int], floor: float) -> int:
    """Add the pairs (new × every stored embedding) with cosine >= `floor`; how many were added."""
    import numpy as np

    if not new_ids:
        return 0
    with db.reading(engine).connect() as conn:  # a read: it never waits for a writer's lock
        rows = conn.execute(sa.text("SELECT sample_id, vector FROM sample_embeddings WHERE embedder_id = :e "
                                    "ORDER BY sample_id"), {"e": embedder_id}).all()
    ids = np.array([r[0] for r in rows], dtype=np.int64)
    every = np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows])  # [sample, dim], unit rows
    at = np.searchsorted(ids, np.array(sorted(new_ids), dtype=np.int64))
    is_new = np.zeros(len(ids), dtype=bool)
    is_new[at] = True
    pairs: dict[tuple[int, int], float] = {}
    for start in range(0, len(at), BLOCK):
        block = at[start:start + BLOCK]
        cos = every[block] @ every.T  # [block, all]
        for i, j in zip(*np.nonzero(cos >= floor - 1e-6)):
            a, b = int(block[i]), int(j)
            if a == b or (is_new[b] and b < a):  # self, or a new × new pair seen from its other side
                continue
            key = (int(ids[min(a, b)]), int(ids[max(a, b)]))
            pairs[key] = min(1.0, float(cos[i, j]))
    if not pairs:
        return 0
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    table = SimilarPair.__table__
    with engine.begin() as conn:
        added = conn.execute(dialect.insert(table).on_conflict_do_nothing().returning(table.c.sample_a),
                             [{"embedder_id": embedder_id, "sample_a": a, "sample_b": b, "cosine": c}
                              for (a, b), c in sorted(pairs.items())]).all()
    return len(added)


def embed_texts(source: str, fingerprint: str, texts: list[str], *, device: str | None = None,
                batch_size: int = 16, max_tokens: int = MAX_TOKENS) -> Any:
    """Unit vectors of `texts`: the model's last hidden states, mean-pooled over each text's tokens."""
    import numpy as np
    import torch

    from selectit.scoring import loading

    src = loading.resolve_source(source)
    expected = fingerprint if src.is_gguf else None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = loading.load_hf_tokenizer_for_model(src, expected)
    model = loading.load_hf_model(src, "float32", device, expected)
    encoded = [tokenizer(t, truncation=True, max_length=max_tokens)["input_ids"] or [0] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)  # [batch, token], right-padded
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, :len(encoded[i])] = 1
            hidden = model.base_model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
            m = mask.to(device).unsqueeze(-1).to(hidden.dtype)  # [batch, token, 1]
            pooled = (hidden * m).sum(1) / m.sum(1)  # [batch, hidden]
            pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
            out[batch] = pooled.cpu().numpy()
    return out
