"""Near-duplicates at scale: signature cells at ingest, and the groups (DuckDB self-join + verify).

Synthetic Alpaca-like JSONL (the generator of benchmarks/ingest.py) with 5% injected near-copies
(one word changed, or the instruction upper-cased). Per size, on a fresh SQLite store: the ingest
(which computes the new samples' signatures), the signatures alone (`signatures.fill` under a
second config: every cell computed again, so its rate is the producer's), and the grouping
(`Fusion.near_duplicates`: bands self-join, verification, union-find). Side by side: rensa vs
datasketch signatures per second on the same texts (datasketch only when installed).

    python benchmarks/dedup.py                      # 100k and 1M
    python benchmarks/dedup.py --sizes 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import write_jsonl  # noqa: E402 - the same synthetic records as the ingest benchmark

from selectit.fusion.session import Fusion  # noqa: E402
from selectit.io.ingest import ingest_file  # noqa: E402
from selectit.store import db, signatures  # noqa: E402


def with_copies(path: Path, share: float = 0.05, seed: int = 3) -> int:
    """Append near-copies of `share` of the records to the JSONL file; how many."""
    rng = random.Random(seed)
    lines = path.read_text(encoding="utf-8").splitlines()
    copies = []
    for line in rng.sample(lines, int(len(lines) * share)):
        rec = json.loads(line)
        if rng.random() < 0.5:
            words = rec["output"].split()
            words[rng.randrange(len(words))] = "zebra"
            rec["output"] = " ".join(words)
        else:
            rec["instruction"] = rec["instruction"].upper()
        copies.append(json.dumps(rec))
    with path.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(copies) + "\n")
    return len(copies)


def side_by_side(texts: list[str]) -> tuple[float, float | None]:
    """Signatures per second of rensa and of datasketch (None when it is not installed)."""
    config = signatures.default_config()
    t0 = time.perf_counter()
    signatures.signatures(texts, config)
    rensa_rate = len(texts) / (time.perf_counter() - t0)
    try:
        import datasketch
    except ImportError:
        return rensa_rate, None
    t0 = time.perf_counter()
    for text in texts:
        m = datasketch.MinHash(num_perm=config.num_perm, seed=config.seed)
        m.update_batch([s.encode() for s in signatures.shingles(signatures.normalise(text), config.ngram)])
    return rensa_rate, len(texts) / (time.perf_counter() - t0)


def bench(n: int, tmp: Path) -> dict[str, float]:
    data = tmp / f"bench_{n}.jsonl"
    write_jsonl(data, n)
    n_copies = with_copies(data)
    url = f"sqlite:///{tmp / f'bench_{n}.db'}"
    engine = db.open_store(url)
    t0 = time.perf_counter()
    result = ingest_file(engine, data, "bench")
    t_ingest = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = signatures.fill(engine, config=signatures.MinHashConfig(
        "rensa", signatures.default_config().library_version, signatures.default_config().algorithm, seed=2))
    t_fill = time.perf_counter() - t0
    t0 = time.perf_counter()
    with Fusion(url) as f:
        n_groups = f.near_duplicates("bench")
        info = json.loads(f.con.execute("SELECT info FROM dedup_info").fetchone()[0])
    t_groups = time.perf_counter() - t0
    engine.dispose()
    texts = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()[:5000]]
    rensa_rate, ds_rate = side_by_side([signatures.whole_text(r["instruction"], r["input"], r["output"])
                                        for r in texts])
    return {"records": result.read, "copies": n_copies, "signatures": result.signatures, "ingest_s": t_ingest,
            "fill_s": t_fill, "fill_cells": again, "groups_s": t_groups, "groups": n_groups,
            "grouped": info["grouped_samples"], "candidates": info["candidate_pairs"],
            "near_pairs": info["near_pairs"], "rensa_per_s": rensa_rate, "datasketch_per_s": ds_rate or 0.0,
            "db_mb": (tmp / f"bench_{n}.db").stat().st_size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, signatures: {signatures.default_config().as_json()}")
    with tempfile.TemporaryDirectory(prefix="selectit-bench-dedup-") as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            r = bench(n, Path(tmp))
            print(f"\n{n:,} records + {r['copies']:,} near-copies (SQLite, {r['db_mb']:.0f} MiB):")
            print(f"  ingest with signatures   {r['ingest_s']:8.1f} s  ({r['records'] / r['ingest_s']:,.0f} records/s, "
                  f"{r['signatures']:,} signature cells)")
            print(f"  signatures alone         {r['fill_s']:8.1f} s  ({r['fill_cells'] / r['fill_s']:,.0f} cells/s "
                  f"incl. band rows; {100 * r['fill_s'] / r['ingest_s']:.0f}% of the ingest's time)")
            print(f"  groups (join + verify)   {r['groups_s']:8.1f} s  ({r['candidates']:,} candidate pairs, "
                  f"{r['near_pairs']:,} verified, {r['groups']:,} groups of {r['grouped']:,} samples)")
            ratio = f"{r['rensa_per_s'] / r['datasketch_per_s']:.0f}×" if r["datasketch_per_s"] else "n/a"
            print(f"  MinHash only, 5k texts   rensa {r['rensa_per_s']:,.0f}/s vs datasketch "
                  f"{r['datasketch_per_s']:,.0f}/s: {ratio}")


if __name__ == "__main__":
    main()
