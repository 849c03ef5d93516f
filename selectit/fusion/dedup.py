"""Near-duplicate groups and what a ranking keeps of them (docs/dedup.md).

`near_groups(con, dataset)` groups a dataset's samples: samples whose normalised whole text is
the same (exact duplicates) and pairs whose MinHash signatures estimate a Jaccard similarity of
at least `Ranking.jaccard`. Candidates come from a DuckDB self-join of the LSH band rows on
(config, band, bucket); each is verified against the estimated Jaccard of the two full
signatures (numpy); the verified pairs are joined into groups by union-find. The groups land in
the temp table `dedup_groups (dataset_id, sample_id, group_id)` (group id: the smallest sample
id of the group; samples in no group have no row), which the view `near_duplicates (dataset,
sample_id, group_id, representative)` reads, the representative being the best-ranked member
under the connection's `Ranking`.

`trimmed_sql(con, dataset_id)` is the dataset's ranking with what the ranking's `dedup` and
`max_per_group` take out removed, ranks renumbered 1.. (`selection.rank_dataset` uses it).
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from selectit.fusion.errors import FusionError
from selectit.fusion.params import params_of
from selectit.fusion.store_attach import sql_str
from selectit.store.signatures import decode, default_config

#: Pairs verified per numpy batch (bounds the memory of the comparison).
VERIFY_BATCH = 200_000


def define(con: duckdb.DuckDBPyConnection) -> None:
    """The empty `dedup_groups` table and the `near_duplicates` view over it (at connect)."""
    con.execute("CREATE TEMP TABLE dedup_groups (dataset_id BIGINT, sample_id BIGINT, group_id BIGINT)")
    con.execute("CREATE TEMP TABLE dedup_info (dataset_id BIGINT, info JSON)")
    con.execute("""
CREATE OR REPLACE TEMP VIEW near_duplicates AS
WITH m AS (
  SELECT g.dataset_id, g.sample_id, g.group_id,
         row_number() OVER (PARTITION BY g.dataset_id, g.group_id ORDER BY r.rank NULLS LAST, ds.position) AS k
  FROM dedup_groups g
  JOIN store.dataset_samples ds ON ds.dataset_id = g.dataset_id AND ds.sample_id = g.sample_id
  LEFT JOIN ranking r ON r.dataset_id = g.dataset_id AND r.sample_id = g.sample_id)
SELECT d.name AS dataset, m.sample_id, m.group_id,
       max(CASE WHEN k = 1 THEN m.sample_id END) OVER (PARTITION BY m.dataset_id, m.group_id) AS representative
FROM m JOIN store.datasets d ON d.id = m.dataset_id""")


def _config_id(con: duckdb.DuckDBPyConnection) -> int | None:
    row = con.execute("SELECT id FROM store.signature_configs WHERE config_hash = "
                      f"{sql_str(default_config().config_hash)}").fetchone()
    return None if row is None else int(row[0])


def near_groups(con: duckdb.DuckDBPyConnection, dataset_id: int, dataset: str, jaccard: float) -> int:
    """Group `dataset_id`'s samples into `dedup_groups` (once per connection); the number of groups."""
    done = provenance(con, dataset_id) or {}
    if "groups" in done:
        return int(done["groups"])
    cfg = _config_id(con)
    n_samples = int(con.execute(
        f"SELECT count(*) FROM store.dataset_samples WHERE dataset_id = {int(dataset_id)}").fetchone()[0])
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _dedup_members AS SELECT g.sample_id, g.norm_key, g.prompt_key "
        "FROM store.dataset_samples ds JOIN store.sample_signatures g ON g.sample_id = ds.sample_id "
        f"AND g.config_id = {int(cfg or -1)} WHERE ds.dataset_id = {int(dataset_id)}")
    n_signed = int(con.execute("SELECT count(*) FROM _dedup_members").fetchone()[0])
    if n_signed < n_samples:
        raise FusionError(f"{n_samples - n_signed} of {n_samples} samples of {dataset} have no near-duplicate "
                          f"signature yet; compute them with `selectit score --dataset {dataset}` (it fills the "
                          f"missing signatures first), then rank again")
    # Exact duplicates after normalisation: one per text takes part in LSH, the others join it.
    exact = con.execute(
        "SELECT sample_id, min(sample_id) OVER (PARTITION BY norm_key) AS canon FROM _dedup_members "
        "QUALIFY sample_id <> canon").fetchall()
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _dedup_bands AS SELECT b.band, b.bucket, b.sample_id "
        f"FROM store.signature_bands b WHERE b.config_id = {int(cfg or -1)} AND b.sample_id IN "
        "(SELECT sample_id FROM _dedup_members QUALIFY sample_id = min(sample_id) OVER (PARTITION BY norm_key))")
    candidates = con.execute(
        "SELECT DISTINCT a.sample_id AS a, b.sample_id AS b FROM _dedup_bands a JOIN _dedup_bands b "
        "ON a.band = b.band AND a.bucket = b.bucket AND a.sample_id < b.sample_id").fetchnumpy()
    near = _verified(con, cfg, candidates["a"], candidates["b"], jaccard)
    groups = _union_find([*exact, *near])
    rows = [(sid, root) for sid, root in groups.items()]
    if rows:
        import pyarrow as pa

        table = pa.table({"dataset_id": [int(dataset_id)] * len(rows), "sample_id": [r[0] for r in rows],
                          "group_id": [r[1] for r in rows]})
        con.register("_dedup_rows", table)
        con.execute("INSERT INTO dedup_groups SELECT * FROM _dedup_rows")
        con.unregister("_dedup_rows")
    n_groups = len(set(groups.values()))
    info = {"signatures": default_config().as_json(), "jaccard": jaccard, "groups": n_groups,
            "grouped_samples": len(rows), "candidate_pairs": int(len(candidates["a"])), "near_pairs": len(near),
            "exact_pairs": len(exact)}
    _note(con, dataset_id, info)
    return n_groups


def _verified(con: duckdb.DuckDBPyConnection, cfg: int | None, a: Any, b: Any, jaccard: float) -> list[tuple[int, int]]:
    """The candidate pairs (a[i], b[i]) whose signatures agree in at least `jaccard` of their positions."""
    import numpy as np

    if len(a) == 0:
        return []
    ids = np.unique(np.concatenate([a, b]))
    con.register("_dedup_ids", {"sample_id": ids})
    rows = con.execute(f"SELECT g.sample_id, g.signature FROM store.sample_signatures g JOIN _dedup_ids i "
                       f"USING (sample_id) WHERE g.config_id = {int(cfg or -1)} ORDER BY g.sample_id").fetchall()
    con.unregister("_dedup_ids")
    order = np.array([r[0] for r in rows], dtype=np.int64)
    sigs = np.stack([decode(r[1]) for r in rows])  # [sample, permutation]
    ia, ib = np.searchsorted(order, a), np.searchsorted(order, b)
    kept = []
    for start in range(0, len(ia), VERIFY_BATCH):
        sa, sb = ia[start:start + VERIFY_BATCH], ib[start:start + VERIFY_BATCH]
        est = (sigs[sa] == sigs[sb]).mean(axis=1)  # [pair]: the estimated Jaccard
        hit = est >= jaccard - 1e-12
        kept += list(zip(order[sa[hit]].tolist(), order[sb[hit]].tolist()))
    return kept


def _union_find(pairs: list[tuple[int, int]]) -> dict[int, int]:
    """sample id → its group id (the group's smallest sample id), for every sample in a pair."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for x, y in pairs:
        rx, ry = root(int(x)), root(int(y))
        if rx != ry:
            parent[max(rx, ry)] = min(rx, ry)
    return {x: root(x) for x in parent}


def prompt_keys(con: duckdb.DuckDBPyConnection, dataset_id: int, dataset: str) -> None:
    """`_dedup_members` for `--dedup prompt` (the prompt keys of the dataset's samples)."""
    cfg = _config_id(con)
    n_samples = int(con.execute(
        f"SELECT count(*) FROM store.dataset_samples WHERE dataset_id = {int(dataset_id)}").fetchone()[0])
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _dedup_prompts AS SELECT g.sample_id, g.prompt_key "
        "FROM store.dataset_samples ds JOIN store.sample_signatures g ON g.sample_id = ds.sample_id "
        f"AND g.config_id = {int(cfg or -1)} WHERE ds.dataset_id = {int(dataset_id)}")
    n_signed = int(con.execute("SELECT count(*) FROM _dedup_prompts").fetchone()[0])
    if n_signed < n_samples:
        raise FusionError(f"{n_samples - n_signed} of {n_samples} samples of {dataset} have no prompt key yet; "
                          f"compute them with `selectit score --dataset {dataset}` (it fills the missing "
                          f"signatures first), then rank again")
    _note(con, dataset_id, {"signatures": default_config().as_json(), "prompt_key": "the normalised first user turn"})


def group_key_sql(group_by: str) -> str:
    """SQL (over `store.dataset_samples ds`) of a sample's group under `--group-by`."""
    if group_by == "id-prefix":
        # ShareGPT splits one chat into chunks `ZUkSe7V_0`, `ZUkSe7V_1`, …: the chat is the id before `_<n>`.
        return r"regexp_replace(ds.original_id, '_[0-9]+$', '')"
    return f"json_extract_string(ds.original, {sql_str('$.' + json.dumps(group_by))})"


def trimmed_sql(con: duckdb.DuckDBPyConnection, dataset_id: int, dataset: str) -> str:
    """A query of `dataset_id`'s ranking (rank, sample_id, position, s_model) with the ranking's
    dedup and per-group cap applied, best first, ranks renumbered from 1."""
    ranking = params_of(con).ranking
    sql = f"SELECT r.rank, r.sample_id, r.position, r.s_model FROM ranking r WHERE r.dataset_id = {int(dataset_id)}"
    if ranking.dedup == "near":
        near_groups(con, dataset_id, dataset, ranking.jaccard)
        # One per group: the best-ranked rankable member (the others' rank is worse).
        sql = (f"SELECT t.* FROM ({sql}) t LEFT JOIN dedup_groups g ON g.dataset_id = {int(dataset_id)} "
               "AND g.sample_id = t.sample_id "
               "QUALIFY g.group_id IS NULL OR row_number() OVER (PARTITION BY g.group_id ORDER BY t.rank) = 1")
    elif ranking.dedup == "prompt":
        prompt_keys(con, dataset_id, dataset)
        sql = (f"SELECT t.* FROM ({sql}) t JOIN _dedup_prompts p USING (sample_id) "
               "QUALIFY row_number() OVER (PARTITION BY p.prompt_key ORDER BY t.rank) = 1")
    if ranking.max_per_group is not None:
        key = group_key_sql(ranking.group_by or "")
        sql = (f"SELECT t.rank, t.sample_id, t.position, t.s_model FROM ({sql}) t "
               f"JOIN store.dataset_samples ds ON ds.dataset_id = {int(dataset_id)} AND ds.sample_id = t.sample_id "
               f"QUALIFY {key} IS NULL OR row_number() OVER (PARTITION BY {key} ORDER BY t.rank) "
               f"<= {int(ranking.max_per_group)}")
    if ranking.diverse is not None:
        sql = diverse_sql(con, dataset_id, dataset, sql, ranking.diverse)
    return (f"SELECT row_number() OVER (ORDER BY rank) AS rank, sample_id, position, s_model "
            f"FROM ({sql}) ORDER BY rank")


def _embedder(con: duckdb.DuckDBPyConnection, dataset_id: int, dataset: str) -> tuple[int, dict[str, Any]]:
    """The newest embedder with a cell for every sample of the dataset: (id, config)."""
    rows = con.execute(
        "SELECT e.id, e.config, count(x.sample_id) FROM store.embedders e LEFT JOIN (SELECT ds.sample_id, "
        "se.embedder_id FROM store.dataset_samples ds JOIN store.sample_embeddings se ON se.sample_id = ds.sample_id "
        f"WHERE ds.dataset_id = {int(dataset_id)}) x ON x.embedder_id = e.id GROUP BY e.id, e.config "
        "ORDER BY e.id DESC").fetchall()
    n = int(con.execute(f"SELECT count(*) FROM store.dataset_samples WHERE dataset_id = {int(dataset_id)}").fetchone()[0])
    for emb_id, config, cells in rows:
        if int(cells) == n:
            return int(emb_id), json.loads(config) if isinstance(config, str) else dict(config)
    raise FusionError(f"--diverse needs an embedding of every sample of {dataset}; compute them with "
                      f"`selectit embed --dataset {dataset}`")


def diverse_sql(con: duckdb.DuckDBPyConnection, dataset_id: int, dataset: str, sql: str, tau: float) -> str:
    """`sql` (a ranking) with deita's greedy pass: from the top, a sample is kept unless its
    cosine to one kept before is above `tau` (the pairs come from `store.similar_pairs`)."""
    emb_id, config = _embedder(con, dataset_id, dataset)
    if tau < config["floor"]:
        raise FusionError(f"--diverse {tau:g} is below the floor of the stored similar pairs ({config['floor']:g}); "
                          f"give a τ >= {config['floor']:g}")
    order = [int(r[0]) for r in con.execute(f"SELECT sample_id FROM ({sql}) ORDER BY rank").fetchall()]
    near: dict[int, list[int]] = {}
    members = f"(SELECT sample_id FROM store.dataset_samples WHERE dataset_id = {int(dataset_id)})"
    for a, b in con.execute(f"SELECT sample_a, sample_b FROM store.similar_pairs WHERE embedder_id = {emb_id} "
                            f"AND cosine > {float(tau)!r} AND sample_a IN {members} AND sample_b IN {members}"
                            ).fetchall():
        near.setdefault(int(a), []).append(int(b))
        near.setdefault(int(b), []).append(int(a))
    kept: set[int] = set()
    for sid in order:
        if not any(other in kept for other in near.get(sid, ())):
            kept.add(sid)
    import pyarrow as pa

    con.register("_diverse_rows", pa.table({"sample_id": sorted(kept)}))
    con.execute("CREATE OR REPLACE TEMP TABLE _diverse_kept AS SELECT sample_id FROM _diverse_rows")
    con.unregister("_diverse_rows")
    _note(con, dataset_id, {"diverse": {"tau": tau, "embedder": config, "kept": len(kept), "dropped": len(order) - len(kept)}})
    return f"SELECT t.* FROM ({sql}) t SEMI JOIN _diverse_kept k ON k.sample_id = t.sample_id"


def _note(con: duckdb.DuckDBPyConnection, dataset_id: int, info: dict[str, Any]) -> None:
    """Merge `info` into the dataset's `dedup_info` row."""
    old = provenance(con, dataset_id) or {}
    con.execute(f"DELETE FROM dedup_info WHERE dataset_id = {int(dataset_id)}")
    con.execute(f"INSERT INTO dedup_info VALUES ({int(dataset_id)}, {sql_str(json.dumps(old | info))})")


def provenance(con: duckdb.DuckDBPyConnection, dataset_id: int) -> dict[str, Any] | None:
    """What the dedup of `dataset_id` used and found (signature config, Jaccard, counts), for a selection's params."""
    row = con.execute(f"SELECT info FROM dedup_info WHERE dataset_id = {int(dataset_id)}").fetchone()
    return None if row is None else json.loads(row[0])
