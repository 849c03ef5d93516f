"""Status benchmark: what `selectit status` costs on a large store, and what the index on
`scores (status, scored_at)` (revision 0010) saves.

Builds a SQLite store at head with N samples × 5 prompts × 1 model of ok cells, scored one per
second back from now (so the last ten minutes hold 600 samples' cells), then times, best of 3:
the recent-cells count (`selectit.jobs.counts.recent_cells`) with the 0010 index and with the
index it replaced (`status` alone), the per-engine count, and the whole `Store.status()`.

    python benchmarks/status.py                    # 200k samples: 1M score rows
    python benchmarks/status.py --samples 50000
"""

from __future__ import annotations

import argparse
import datetime as dt
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

import selectit
from selectit.contract import CellStatus
from selectit.jobs.counts import recent_cells
from selectit.store import db
from selectit.store.schema import Prompt, Score, utcnow


def build(path: Path, n_samples: int) -> list[int]:
    """A store at head with every cell of N samples scored ok; the active prompt ids."""
    url = f"sqlite:///{path}"
    db.upgrade(url)
    con = sqlite3.connect(path)
    con.execute("INSERT INTO datasets (id, name, source, created_at) VALUES (1, 'd', 'bench', '2026-01-01')")
    con.execute("INSERT INTO models (id, name, source, fingerprint, dtype, n_params, label_ids, max_tokens, active, "
                "created_at) VALUES (1, 'm', 'bench', 'f', 'float32', 1, '{}', 512, 1, '2026-01-01')")
    prompts = [r[0] for r in con.execute("SELECT id FROM prompts WHERE active")]
    con.executemany("INSERT INTO samples (id, content_hash, instruction, input, output, n_chars, created_at) "
                    "VALUES (?, ?, ?, '', ?, 600, '2026-01-01')",
                    ((i, f"{i:064x}", "x" * 200, "y" * 400) for i in range(1, n_samples + 1)))
    con.executemany("INSERT INTO dataset_samples (dataset_id, sample_id, position) VALUES (1, ?, ?)",
                    ((i, i) for i in range(1, n_samples + 1)))
    now = utcnow()
    con.executemany(
        "INSERT INTO scores (sample_id, model_id, prompt_id, p1, p2, p3, p4, p5, mass, n_tokens, truncated, status, "
        "attempts, scored_at, worker, engine, engine_version) "
        "VALUES (?, 1, ?, .1, .2, .3, .2, .1, .9, 300, 0, 'ok', 1, ?, 'host:1', 'torch', 'torch 2.13.0+cpu')",
        ((i, p, (now - dt.timedelta(seconds=i)).isoformat(" ")) for i in range(1, n_samples + 1) for p in prompts))
    con.commit()
    con.close()
    return prompts


def best(fn: Callable[[], object], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "status.db"
        t0 = time.perf_counter()
        prompts = build(path, args.samples)
        n_rows = args.samples * len(prompts)
        print(f"status benchmark: SQLite, {n_rows:,} ok score rows (built in {time.perf_counter() - t0:.0f} s)")
        url = f"sqlite:///{path}"
        engine = db.open_store(url)
        now = utcnow()
        recent = recent_cells(now - dt.timedelta(seconds=600), now - dt.timedelta(seconds=60))
        per_engine = (sa.select(Score.model_id, Prompt.set_name, Score.engine, sa.func.count())
                      .join(Prompt, Prompt.id == Score.prompt_id)
                      .where(Prompt.active.is_(True), Score.status == CellStatus.OK)
                      .group_by(Score.model_id, Prompt.set_name, Score.engine))

        def query(q: sa.Select) -> Callable[[], object]:
            def run() -> object:
                with engine.connect() as conn:
                    return conn.execute(q).all()
            return run

        with_index = best(query(recent))
        engines = best(query(per_engine))
        whole = best(lambda: selectit.open(url).status())
        con = sqlite3.connect(path)  # the index before revision 0010
        con.execute("DROP INDEX ix_scores_status_scored_at")
        con.execute("CREATE INDEX ix_scores_status ON scores (status)")
        con.commit()
        con.close()
        engine.dispose()
        without = best(query(recent))
        print(f"recent cells (last 10 min)   (status, scored_at) index {with_index * 1000:8.1f} ms   "
              f"status index only {without * 1000:8.1f} ms   ratio {without / with_index:7.0f}x")
        print(f"cells per engine (all ok)    {engines * 1000:8.1f} ms")
        print(f"Store.status() (0010 index)  {whole * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
