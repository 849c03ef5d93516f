"""Fusion benchmark: selectit's DuckDB ranking vs a straightforward pandas implementation.

Builds synthetic score tables (N samples × 5 prompts × 3 models, scale 5) in a real curation
database — 52k samples (780k score rows, Alpaca-GPT4 scale) and 1M samples (15M rows) — then
ranks the dataset both ways from the database, checks both give the same top 20 %, and prints
the times and the ratio.

    python benchmarks/fusion.py                       # SQLite, 52k and 1M samples
    python benchmarks/fusion.py --sizes 52000         # only the 780k-row table
    python benchmarks/fusion.py --backends postgresql --postgres-url …   # PostgreSQL only
    python benchmarks/fusion.py --postgres-url postgresql://u@127.0.0.1:5432/postgres

PostgreSQL is measured too when --postgres-url (or $SELECTIT_BENCH_POSTGRES_URL) names a server
where a scratch database may be created (it is dropped afterwards).
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import sqlalchemy as sa

from selectit.ranking import Ranking
from selectit.store import db

N_PROMPTS = 5
MODELS = (("bench-a", 135_000_000), ("bench-b", 360_000_000), ("bench-c", 1_700_000_000))
SCALE = 5
ALPHA = 0.2
TOP = 0.2


# --------------------------------------------------------------------------------------------
# Synthetic data, written in bulk (sqlite3 executemany / PostgreSQL COPY)
# --------------------------------------------------------------------------------------------
def _score_columns(n_samples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Score rows in (sample, model, prompt) order: p1..p5 with mass in (0.2, 1)."""
    rng = np.random.default_rng(seed)
    n_rows = n_samples * len(MODELS) * N_PROMPTS
    sample = np.repeat(np.arange(1, n_samples + 1), len(MODELS) * N_PROMPTS)
    model = np.tile(np.repeat(np.arange(1, len(MODELS) + 1), N_PROMPTS), n_samples)
    prompt = np.tile(np.arange(1, N_PROMPTS + 1), n_samples * len(MODELS))
    # Peaked distributions, so argmax and the spread vary from cell to cell.
    raw = rng.gamma(0.6, size=(n_rows, SCALE))
    mass = rng.uniform(0.2, 1.0, size=n_rows)
    p = raw / raw.sum(axis=1, keepdims=True) * mass[:, None]
    cols = {"sample_id": sample, "model_id": model, "prompt_id": prompt}
    for k in range(SCALE):
        cols[f"p{k + 1}"] = p[:, k]
    cols["mass"] = p.sum(axis=1)
    return cols


def _fixed_rows(n_samples: int) -> dict[str, list[tuple]]:
    return {
        "datasets": [(1, "bench", "synthetic")],
        "models": [
            (i + 1, name, "synthetic", f"{i:064x}", "float32", n_params, '{"shared-context": [1,2,3,4,5]}', 2048, True)
            for i, (name, n_params) in enumerate(MODELS)
        ],
        "prompts": [
            (i + 1, "bench", i, "shared-context", f"Rate it ({i}).", f"{i:064x}", SCALE, True) for i in range(N_PROMPTS)
        ],
    }


MODEL_COLS = "id, name, source, fingerprint, dtype, n_params, label_ids, max_tokens, active"
PROMPT_COLS = "id, set_name, position, layout, template, text_hash, scale, active"
SCORE_COLS = "sample_id, model_id, prompt_id, p1, p2, p3, p4, p5, mass, n_tokens, truncated, status, attempts"


def build_sqlite(path: Path, n_samples: int) -> str:
    url = f"sqlite:///{path}"
    if path.exists():  # --keep: reuse a complete table from an earlier run
        with sqlite3.connect(path) as con:
            if con.execute("SELECT count(*) FROM scores").fetchone()[0] == n_samples * len(MODELS) * N_PROMPTS:
                return url
        path.unlink()
    db.upgrade(url)
    fixed = _fixed_rows(n_samples)
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")
    con.execute("DELETE FROM prompts")  # the benchmark's own prompt set replaces the migrations' defaults
    con.execute("INSERT INTO datasets (id, name, source) VALUES (?, ?, ?)", fixed["datasets"][0])
    con.executemany(f"INSERT INTO models ({MODEL_COLS}) VALUES (?,?,?,?,?,?,?,?,?)", fixed["models"])
    con.executemany(f"INSERT INTO prompts ({PROMPT_COLS}) VALUES (?,?,?,?,?,?,?,?)", fixed["prompts"])
    con.executemany(
        "INSERT INTO samples (id, content_hash, instruction, input, output, n_chars) VALUES (?,?,?,?,?,?)",
        ((i, f"{i:064x}", f"Instruction {i}", "", f"Output {i}", 20) for i in range(1, n_samples + 1)),
    )
    con.executemany(
        "INSERT INTO dataset_samples (dataset_id, sample_id, position) VALUES (1, ?, ?)",
        ((i, i - 1) for i in range(1, n_samples + 1)),
    )
    chunk = 1_000_000 // (len(MODELS) * N_PROMPTS)
    for start in range(0, n_samples, chunk):
        cols = _score_columns(min(chunk, n_samples - start), seed=start)
        cols["sample_id"] = cols["sample_id"] + start
        rows = zip(
            cols["sample_id"].tolist(), cols["model_id"].tolist(), cols["prompt_id"].tolist(),
            *(cols[f"p{k}"].tolist() for k in range(1, SCALE + 1)), cols["mass"].tolist(),
        )
        con.executemany(
            f"INSERT INTO scores ({SCORE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,100,0,'ok',1)", rows
        )
    con.commit()
    con.close()
    return url


def build_postgres(admin_url: str, n_samples: int) -> str:
    """A scratch PostgreSQL database at head, filled through DuckDB's postgres extension (COPY)."""
    import duckdb
    import pyarrow as pa

    from selectit.fusion.extensions import extension_path
    from selectit.fusion.store_attach import libpq, sql_str

    admin = sa.create_engine(db.resolve_url(admin_url), isolation_level="AUTOCOMMIT")
    name = f"bench_fusion_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    url = db.resolve_url(admin_url).rsplit("/", 1)[0] + "/" + name
    db.upgrade(url)
    fixed = _fixed_rows(n_samples)
    engine = db.make_engine(url)
    with engine.begin() as conn:
        raw = conn.connection.cursor()
        raw.execute("DELETE FROM prompts")  # the benchmark's own prompt set replaces the migrations' defaults
        raw.execute("INSERT INTO datasets (id, name, source) VALUES (%s, %s, %s)", fixed["datasets"][0])
        raw.executemany(f"INSERT INTO models ({MODEL_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)", fixed["models"])
        raw.executemany(f"INSERT INTO prompts ({PROMPT_COLS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s)", fixed["prompts"])
    engine.dispose()
    con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
    con.execute(f"LOAD '{extension_path('postgres')}'")
    con.execute(f"ATTACH {sql_str(libpq(sa.engine.make_url(url)))} AS pg (TYPE postgres)")
    con.execute(
        f"INSERT INTO pg.samples (id, content_hash, instruction, input, output, n_chars) "
        f"SELECT i, lpad(printf('%x', i), 64, '0'), 'Instruction ' || i, '', 'Output ' || i, 20 "
        f"FROM range(1, {n_samples + 1}) t(i)"
    )
    con.execute(
        f"INSERT INTO pg.dataset_samples (dataset_id, sample_id, position) "
        f"SELECT 1, i, i - 1 FROM range(1, {n_samples + 1}) t(i)"
    )
    chunk = 1_000_000 // (len(MODELS) * N_PROMPTS)
    for start in range(0, n_samples, chunk):
        cols = _score_columns(min(chunk, n_samples - start), seed=start)
        cols["sample_id"] = cols["sample_id"] + start
        con.register("chunk", pa.table(cols))
        con.execute(
            "INSERT INTO pg.scores (sample_id, model_id, prompt_id, p1, p2, p3, p4, p5, mass, n_tokens, truncated, "
            "status, attempts) SELECT sample_id, model_id, prompt_id, p1, p2, p3, p4, p5, mass, 100, false, 'ok', 1 "
            "FROM chunk"
        )
        con.unregister("chunk")
    con.close()
    with sa.create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:
        for table in ("datasets", "models", "prompts", "samples"):
            conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        conn.exec_driver_sql("ANALYZE")
    return url


def drop_postgres(admin_url: str, url: str) -> None:
    admin = sa.create_engine(db.resolve_url(admin_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    admin.dispose()


# --------------------------------------------------------------------------------------------
# The two rankings, both from the database
# --------------------------------------------------------------------------------------------
def rank_selectit(url: str) -> tuple[list[int], dict[int, float]]:
    """selectit: connect (attach read-only, views) and rank the dataset; the top 20 % ids."""
    from selectit.fusion import selection
    from selectit.fusion import views as fusion

    con = fusion.connect(url, Ranking(prompt_set="bench", alpha=ALPHA))
    try:
        selection.rank_dataset(con, "bench")
        top = selection.chosen(con, selection.Criterion(top=TOP))
    finally:
        con.close()
    return [r.sample_id for r in top], {r.sample_id: r.s_model for r in top}


def rank_pandas(url: str) -> tuple[list[int], dict[int, float]]:
    """A straightforward pandas implementation of the same formulas (paper), read with read_sql."""
    engine = sa.create_engine(db.resolve_url(url))
    with engine.connect() as conn:
        models = pd.read_sql_query("SELECT id AS model_id, weight, n_params FROM models WHERE active", conn)
        prompts = pd.read_sql_query("SELECT id AS prompt_id, scale FROM prompts WHERE active AND set_name = 'bench'", conn)
        members = pd.read_sql_query(
            "SELECT ds.sample_id, ds.position FROM dataset_samples ds JOIN datasets d ON d.id = ds.dataset_id "
            "WHERE d.name = 'bench'", conn)
        scores = pd.read_sql_query(
            "SELECT sample_id, model_id, prompt_id, p1, p2, p3, p4, p5 FROM scores WHERE status = 'ok'", conn)
    engine.dispose()
    scores = scores.merge(prompts, on="prompt_id").merge(models[["model_id"]], on="model_id")
    p = scores[["p1", "p2", "p3", "p4", "p5"]].to_numpy()
    k = np.arange(1, 6)
    p = np.where(k[None, :] <= scores["scale"].to_numpy()[:, None], p, np.nan)
    q = p / np.nansum(p, axis=1, keepdims=True)  # paper: P'_k = p_k / Σp
    base = np.nanargmax(q, axis=1) + 1  # first maximum → the smaller k
    qmax = np.nanmax(q, axis=1)
    scores["s_token"] = base * np.nansum(np.abs(q - qmax[:, None]), axis=1) / (scores["scale"] - 1)
    grouped = scores.groupby(["sample_id", "model_id"])["s_token"]
    sent = pd.DataFrame({"mean": grouped.mean(), "std": grouped.std(ddof=0), "n": grouped.count()})
    sent = sent[sent["n"] == len(prompts)]
    sent["s_sent"] = sent["mean"] / (1 + ALPHA * sent["std"])
    sent = sent.reset_index()
    theta = models.assign(theta=models["weight"].fillna(models["n_params"]).astype(float))
    theta["share"] = theta["theta"] / theta["theta"].sum()
    sent = sent.merge(theta[["model_id", "share"]], on="model_id")
    sent["w"] = sent["share"] * sent["s_sent"]
    fused = sent.groupby("sample_id").agg(s_model=("w", "sum"), n=("w", "size"))
    fused = fused[fused["n"] == len(models)].reset_index().merge(members, on="sample_id")
    fused = fused.sort_values(["s_model", "position"], ascending=[False, True])
    keep = fused.head(int(math.floor(TOP * len(fused) + 1e-9)))
    return keep["sample_id"].tolist(), dict(zip(keep["sample_id"], keep["s_model"]))


def timed(fn, *args):  # noqa: ANN001, ANN202
    """(wall seconds, CPU seconds of this process, all threads), result."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return (time.perf_counter() - start, time.process_time() - cpu), result


def compare(label: str, url: str, n_rows: int, repeats: int) -> None:
    runs = [timed(rank_selectit, url) for _ in range(repeats)]  # best of `repeats`
    (t_sel, c_sel), (ids_sel, s_sel) = min(runs, key=lambda r: r[0][0])
    (t_pd, c_pd), (ids_pd, s_pd) = timed(rank_pandas, url)
    same = set(ids_sel) == set(ids_pd)
    max_diff = max(abs(s_sel[i] - s_pd[i]) for i in ids_sel if i in s_pd) if same else float("nan")
    print(f"{label:<10} {n_rows:>11,} rows   selectit {t_sel:7.2f} s (cpu {c_sel:6.2f} s)   "
          f"pandas {t_pd:7.2f} s (cpu {c_pd:6.2f} s)   pandas/selectit {t_pd / t_sel:5.1f}x wall, "
          f"{c_pd / c_sel:5.1f}x cpu   same top 20%: {'yes' if same else 'NO'} "
          f"({len(ids_sel):,} samples, order {'same' if ids_sel == ids_pd else 'differs'}, "
          f"max |dS| {max_diff:.1e})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="52000,1000000", help="samples per run, comma-separated")
    parser.add_argument("--postgres-url", default=os.environ.get("SELECTIT_BENCH_POSTGRES_URL"))
    parser.add_argument("--workdir", default=None, help="where the SQLite files go [default: a temp dir]")
    parser.add_argument("--repeats", type=int, default=3, help="selectit runs per size (best is shown)")
    parser.add_argument("--backends", default="sqlite,postgresql", help="which databases to measure")
    parser.add_argument("--keep", action="store_true",
                        help="keep the SQLite files in --workdir and reuse them on the next run")
    args = parser.parse_args()
    import platform

    print(f"fusion benchmark: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"{len(MODELS)} models × {N_PROMPTS} prompts, scale {SCALE}, alpha {ALPHA}, top {TOP:.0%}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        tmp = args.workdir if args.keep and args.workdir else scratch
        for n in (int(x) for x in args.sizes.split(",")):
            n_rows = n * len(MODELS) * N_PROMPTS
            if "sqlite" in args.backends:
                start = time.perf_counter()
                url = build_sqlite(Path(tmp) / f"bench_{n}.db", n)
                print(f"  (built SQLite with {n_rows:,} score rows in {time.perf_counter() - start:.0f} s)", flush=True)
                compare("sqlite", url, n_rows, args.repeats if n <= 100_000 else 1)
                if not args.keep:
                    Path(url.split("///", 1)[1]).unlink()
            if args.postgres_url and "postgresql" in args.backends:
                start = time.perf_counter()
                url = build_postgres(args.postgres_url, n)
                print(f"  (built PostgreSQL with {n_rows:,} score rows in {time.perf_counter() - start:.0f} s)", flush=True)
                try:
                    compare("postgresql", url, n_rows, args.repeats if n <= 100_000 else 1)
                finally:
                    drop_postgres(args.postgres_url, url)


if __name__ == "__main__":
    main()
