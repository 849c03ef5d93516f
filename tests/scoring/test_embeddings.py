"""Embeddings as cells, similar pairs grown new × all, and `--diverse τ` against a plain-Python
greedy pass (docs/dedup.md). A tiny random Llama (tests/tiny_model.py) embeds the samples."""

from __future__ import annotations

import random

import numpy as np
import sqlalchemy as sa
from test_dedup import demo, score_everything, url_of, variant, write

import selectit
from selectit.ranking import Ranking
from selectit.scoring.embeddings import FLOOR


def stored(engine: sa.Engine) -> tuple[list[int], np.ndarray, dict[tuple[int, int], float]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT sample_id, vector FROM sample_embeddings ORDER BY sample_id")).all()
        pairs = {(a, b): c for a, b, c in conn.execute(sa.text("SELECT sample_a, sample_b, cosine FROM similar_pairs"))}
    return [r[0] for r in rows], np.stack([np.frombuffer(r[1], dtype="<f4") for r in rows]), pairs


def brute_force_pairs(ids: list[int], vectors: np.ndarray) -> tuple[set, set]:
    """(pairs clearly above the floor, pairs within 1e-5 of it: either answer is right)."""
    cos = vectors @ vectors.T
    sure, edge = set(), set()
    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            if cos[i, j] >= FLOOR + 1e-5:
                sure.add((ids[i], ids[j]))
            elif cos[i, j] > FLOOR - 1e-5:
                edge.add((ids[i], ids[j]))
    return sure, edge


def test_pairs_grow_new_by_all_and_diverse_matches_a_greedy_reference(engine, tiny_model_dir, tmp_path) -> None:
    rng = random.Random(11)
    records = demo()[:50]
    write(tmp_path / "a.json", records + [variant(r, i % 5, rng) for i, r in enumerate(records[:15])])
    url = url_of(engine)
    with selectit.open(url) as store:
        store.ingest(tmp_path / "a.json", "d")
        store.add_model("tiny", str(tiny_model_dir), dtype="float32")
        first = store.embed(dataset="d", model="tiny")
        ids, vectors, pairs = stored(engine)
        assert first.cells == len(ids) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
        # 10% more samples: only theirs are embedded, and the pairs are those of every sample.
        write(tmp_path / "b.json", demo()[50:57])
        store.ingest(tmp_path / "b.json", "d")
        second = store.embed(dataset="d", model="tiny")
        ids, vectors, pairs = stored(engine)
        assert second.cells == 7 and len(ids) == first.cells + 7
        sure, edge = brute_force_pairs(ids, vectors)
        assert sure <= set(pairs) <= sure | edge and len(sure) > 0
        score_everything(engine)
        base = Ranking(models=("A",), prompt_set="s")
        plain = store.rank("d", ranking=base).column("sample_id").to_pylist()
        cosines = sorted(pairs.values())
        tau = max(FLOOR, cosines[len(cosines) // 2])
        kept = store.rank("d", ranking=Ranking(models=("A",), prompt_set="s", diverse=tau)).to_pylist()
    at = {sid: i for i, sid in enumerate(ids)}
    cos = vectors @ vectors.T
    reference: list[int] = []
    for sid in plain:  # deita's pass, from the full cosine matrix
        if all(cos[at[sid], at[k]] <= tau for k in reference):
            reference.append(sid)
    assert [r["sample_id"] for r in kept] == reference and len(reference) < len(plain)
    assert [r["rank"] for r in kept] == list(range(1, len(kept) + 1))


def test_diverse_needs_embeddings_and_a_tau_at_or_above_the_floor(cli, engine, tmp_path) -> None:
    write(tmp_path / "a.json", demo()[:10])
    assert cli("ingest", tmp_path / "a.json", "--dataset", "d").exit_code == 0
    score_everything(engine)
    out = cli("rank", "--dataset", "d", "--prompt-set", "s", "--diverse", "0.9")
    assert out.exit_code != 0 and "compute them with `selectit embed --dataset d`" in out.output
    out = cli("rank", "--dataset", "d", "--prompt-set", "s", "--diverse", "1.5")
    assert out.exit_code != 0 and "--diverse must be a cosine in (0, 1]" in out.output
