"""Fleet benchmark: cells/s with 1 and 2 Celery CPU workers vs in-process `selectit score` on the
same cells (the tiny test model), and the time to plan 1M samples × 5 prompts × 2 models.

Needs a PostgreSQL server (an admin URL: databases are created and dropped) and Redis:

    python benchmarks/fleet.py --postgres postgresql://selectit@127.0.0.1:5432/postgres \\
        --redis redis://127.0.0.1:6379/0 [--samples 60] [--plan-samples 1000000]

Every torch process runs with one thread (OMP_NUM_THREADS=1), so 1 vs 2 workers compares
processes, not intra-op threads.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path[:0] = [str(ROOT), str(TESTS)]
os.environ.setdefault("OMP_NUM_THREADS", "1")

from selectit import db, planner, registry, runner  # noqa: E402
from selectit.ingest import ingest_file  # noqa: E402


def fresh_db(admin_url: str) -> tuple[str, callable]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + "/" + name

    def drop() -> None:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return url, drop


def seeded(admin_url: str, tmp: Path, model_dir: Path, n: int) -> tuple[str, callable, sa.Engine]:
    url, drop = fresh_db(admin_url)
    engine = db.open_store(url)
    records = json.loads((ROOT / "selectit" / "data" / "alpaca_en_demo.json").read_text())[:n]
    path = tmp / "d.json"
    path.write_text(json.dumps(records))
    ingest_file(engine, path, "d")
    with db.session_scope(engine) as s:
        registry.ensure_default_prompts(s)  # what `selectit init` does
        registry.add_model(s, "tiny", str(model_dir), dtype="float32")
    return url, drop, engine


def n_scored(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT count(*) FROM scores WHERE status = 'ok'")).scalar()


def in_process(admin_url: str, tmp: Path, model_dir: Path, n: int) -> float:
    url, drop, engine = seeded(admin_url, tmp, model_dir, n)
    try:
        cache = runner.ScorerCache()
        with db.session_scope(engine) as s:  # load the model before the clock, like a warm worker
            cache(registry.find_model(s, "tiny"))
        t = time.perf_counter()
        out = runner.score_in_process(engine, scorer_for=cache)
        dt = time.perf_counter() - t
        assert out.scored == n * 5, out
        return out.scored / dt
    finally:
        engine.dispose()
        drop()


def fleet(admin_url: str, redis_url: str, tmp: Path, model_dir: Path, n: int, workers: int) -> float:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    url, drop, engine = seeded(admin_url, tmp, model_dir, n)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}", "SELECTIT_DATABASE_URL": url, "SELECTIT_BROKER_URL": redis_url,
           "SELECTIT_JOB_TOKENS": "3000"}
    procs, logs = [], []
    try:
        for i in range(workers):
            log = tmp / f"w{i}.log"
            logs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "selectit.workers.app", "worker", "-Q", "model.tiny,control",
                 "--pool", "solo", "-n", f"b{i}@%h", "--without-gossip", "--without-mingle", "-l", "WARNING"],
                env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=tmp))
        # warm up: each worker loads torch and the model on a throwaway job before the clock
        time.sleep(2)
        from selectit.workers import app as worker_app

        os.environ["SELECTIT_BROKER_URL"] = redis_url
        worker_app.app.conf.broker_url = redis_url
        warm = tmp / "warm.json"
        recs = json.loads((ROOT / "selectit" / "data" / "alpaca_en_demo.json").read_text())[900:900 + 2 * workers]
        warm.write_text(json.dumps(recs))
        ingest_file(engine, warm, "warm")
        ids = planner.plan(engine, dataset="warm", max_tokens_per_job=1)
        worker_app.send_jobs(ids, engine)
        deadline = time.time() + 300
        while n_scored(engine) < len(recs) * 5:
            assert time.time() < deadline, "warm-up did not finish"
            time.sleep(0.2)
        base = n_scored(engine)
        t = time.perf_counter()
        ids = planner.plan(engine, dataset="d", max_tokens_per_job=3000)
        worker_app.send_jobs(ids, engine)
        while n_scored(engine) < base + n * 5:
            assert time.time() < deadline, "the fleet did not finish"
            time.sleep(0.05)
        return n * 5 / (time.perf_counter() - t)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        engine.dispose()
        drop()


def plan_1m(admin_url: str, n: int) -> tuple[float, int, float]:
    url, drop = fresh_db(admin_url)
    engine = db.open_store(url)
    try:
        rnd = random.Random(0)
        with db.session_scope(engine) as s:
            registry.ensure_default_prompts(s)
            s.execute(sa.text("INSERT INTO datasets (id, name) VALUES (1, 'synthetic')"))
            for i, name in enumerate(("small", "large")):
                s.execute(sa.text(
                    "INSERT INTO models (id, name, source, fingerprint, dtype, n_params, label_ids, max_tokens, active)"
                    " VALUES (:i, :n, 'x', :f, 'bfloat16', 1, '{}', 2048, true)"), {"i": i + 1, "n": name, "f": name})
            raw = s.connection().connection.driver_connection
            with raw.cursor() as cur:
                with cur.copy("COPY samples (id, content_hash, instruction, input, output, n_chars) FROM STDIN") as cp:
                    for i in range(1, n + 1):
                        cp.write_row((i, f"{i:064x}", "i", "", "o", rnd.randint(50, 2000)))
                with cur.copy("COPY dataset_samples (dataset_id, sample_id, position) FROM STDIN") as cp:
                    for i in range(1, n + 1):
                        cp.write_row((1, i, i - 1))
        with engine.begin() as c:
            c.exec_driver_sql("ANALYZE")
        t = time.perf_counter()
        ids = planner.plan(engine)
        first = time.perf_counter() - t
        t = time.perf_counter()
        assert planner.plan(engine) == []
        again = time.perf_counter() - t
        return first, len(ids), again
    finally:
        engine.dispose()
        drop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postgres", required=True, help="admin URL of a PostgreSQL server")
    ap.add_argument("--redis", required=True)
    ap.add_argument("--samples", type=int, default=60, help="samples scored (× 5 prompts) per variant")
    ap.add_argument("--plan-samples", type=int, default=1_000_000)
    ap.add_argument("--skip-scoring", action="store_true", help="only the planning benchmark")
    args = ap.parse_args()
    from tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.skip_scoring:
            model_dir = build_tiny_model(tmp / "tiny")
            cells = args.samples * 5
            rate_in = in_process(args.postgres, tmp, model_dir, args.samples)
            rate_1 = fleet(args.postgres, args.redis, tmp, model_dir, args.samples, 1)
            rate_2 = fleet(args.postgres, args.redis, tmp, model_dir, args.samples, 2)
            print(f"scoring {cells} cells (tiny model, CPU, PostgreSQL, warm processes, 1 torch thread each):")
            print(f"  in-process selectit score : {rate_in:8.1f} cells/s")
            print(f"  1 celery worker           : {rate_1:8.1f} cells/s  (queue overhead: in-process / 1 worker"
                  f" = {rate_in / rate_1:.2f}x)")
            print(f"  2 celery workers          : {rate_2:8.1f} cells/s  (2 workers / 1 worker = {rate_2 / rate_1:.2f}x)")
    first, n_jobs, again = plan_1m(args.postgres, args.plan_samples)
    print(f"plan {args.plan_samples:,} samples x 5 prompts x 2 models on PostgreSQL: {first:.1f} s "
          f"({n_jobs} jobs, {args.plan_samples * 10:,} cells); planning again: {again:.1f} s, 0 new jobs")

if __name__ == "__main__":
    main()
