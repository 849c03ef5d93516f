"""Ingest speed: records/s for synthetic Alpaca-like JSONL on SQLite and PostgreSQL, and re-ingest time.

Records have realistic lengths (seeded): instruction 60–200 chars, input empty 60% of the time
else 100–400 chars, output 200–1500 chars. Each size is ingested into a fresh database, then the
same file is ingested again (which must add nothing); the script prints records/s and the ratio
re-ingest / ingest, side by side for both backends.

    python benchmarks/ingest.py                        # 52k and 1M, SQLite (+ PostgreSQL if given)
    python benchmarks/ingest.py --sizes 52000 --postgres-url postgresql://u@127.0.0.1:5432/postgres

PostgreSQL: --postgres-url or $SELECTIT_BENCH_POSTGRES_URL (a server URL; a fresh database is
created and dropped per size). Without one, PostgreSQL is skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import string
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from selectit.io.ingest import ingest_file
from selectit.store import db

WORDS = ["".join(random.Random(i).choices(string.ascii_lowercase, k=random.Random(i).randint(2, 10)))
         for i in range(5000)]


#: Word soup to cut records from: random windows of it are cheap to take and never repeat whole.
CORPUS = " ".join(random.Random(1).choices(WORDS, k=400_000))


def _text(rng: random.Random, lo: int, hi: int) -> str:
    n = rng.randint(lo, hi)
    start = rng.randrange(len(CORPUS) - n)
    return CORPUS[start:start + n]


def write_jsonl(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            rec = {
                "instruction": _text(rng, 60, 200),
                "input": "" if rng.random() < 0.6 else _text(rng, 100, 400),
                "output": _text(rng, 200, 1500),
            }
            fh.write(json.dumps(rec) + "\n")


def _fresh_postgres(server_url: str) -> tuple[str, callable]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(db.resolve_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = db.resolve_url(server_url).rsplit("/", 1)[0] + "/" + name

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return url, drop


def bench(url: str, path: Path, n: int, label: str) -> tuple[float, float]:
    engine = db.open_store(url)
    t0 = time.perf_counter()
    first = ingest_file(engine, path, "bench")
    t1 = time.perf_counter()
    again = ingest_file(engine, path, "bench")
    t2 = time.perf_counter()
    engine.dispose()
    assert first.new == n and again.new == 0, (first.summary, again.summary)
    ingest_s, re_s = t1 - t0, t2 - t1
    print(f"{label:<10} {n:>9,} records  ingest {ingest_s:7.1f} s ({n / ingest_s:8,.0f} rec/s)   "
          f"re-ingest {re_s:7.1f} s ({n / re_s:8,.0f} rec/s)   re/ingest {re_s / ingest_s:.2f}", flush=True)
    return ingest_s, re_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="52000,1000000", help="comma-separated record counts")
    ap.add_argument("--postgres-url", default=os.environ.get("SELECTIT_BENCH_POSTGRES_URL"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; python "
          f"{platform.python_version()}; SQLite {__import__('sqlite3').sqlite_version}")
    with tempfile.TemporaryDirectory(prefix="selectit-bench-") as tmp:
        for n in sizes:
            path = Path(tmp) / f"alpaca_{n}.jsonl"
            t = time.perf_counter()
            write_jsonl(path, n, args.seed)
            print(f"wrote {n:,} records ({path.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t:.1f} s")
            bench(f"sqlite:///{Path(tmp) / f'bench_{n}.db'}", path, n, "SQLite")
            if args.postgres_url:
                url, drop = _fresh_postgres(args.postgres_url)
                try:
                    bench(url, path, n, "PostgreSQL")
                finally:
                    drop()
            else:
                print("PostgreSQL skipped: pass --postgres-url or set SELECTIT_BENCH_POSTGRES_URL")
            path.unlink()


if __name__ == "__main__":
    main()
