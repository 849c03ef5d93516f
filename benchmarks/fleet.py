"""Fleet benchmark: how many cells/s the bookkeeping sustains with 1, 2 and 4 Celery workers on
PostgreSQL (an instant scorer, so only the queue and the database are measured), and the planner
at 1M samples × 5 prompts × 2 models.

Needs a PostgreSQL server (an admin URL: databases are created and dropped) and Redis:

    python benchmarks/fleet.py --postgres postgresql://selectit@127.0.0.1:5432/postgres \\
        --redis redis://127.0.0.1:6379/0 [--samples 4000] [--workers 1,2,4] [--plan-samples 1000000]

With `--gpu-ms-per-cell MS` the workers score through `scorer_hooks:gpu`, which sleeps MS ms a
cell (a GPU: 4 ms ≈ a 7B rater on an H100), `--samples` is per worker, and each run reports its
cells/s as a share of the ideal (workers × 1000/MS: a GPU never waiting on bookkeeping), plus
what the PostgreSQL server spent per stored cell (CPU seconds of its processes, WAL bytes) and
the Redis commands per job, and where the workers' time went: the phases their selectit recorded
(`selectit.timing`: scoring, claim, reads, writes, the wait for the next job), the emulated
GPU's sleep asked and overslept (a sleep woken late: the CPUs are busy), the time before each
worker's first claim and after its last write, and the CPU seconds the workers and PostgreSQL
used. `--baseline REF` runs the same fleets first on another version, side by side in one run: a
git ref of this repository (exported with `git archive` and installed on its own with `pip
install --no-deps --target`, since a plain checkout has no `selectit.workers` package), or a
directory such an install is in:

    python benchmarks/fleet.py --postgres … --redis … --gpu-ms-per-cell 4 --workers 1,2,4,8 \\
        --samples 600 --skip-planning --baseline main

`--tokenize MODEL` has the emulated GPU tokenize each request first with MODEL's real tokenizer,
as an engine does, over the demo data's texts (not the synthetic "ooo…" ones): whether the
tokenizer's time is hidden behind the GPU's (the streams prepare each batch ahead).

Workers score through `SELECTIT_SCORER=scorer_hooks:instant` (tests/scorer_hooks.py): every cell
answered at once with a fixed distribution, no model, no torch. What remains per job is the real
work of a worker — claim, cell lookup, committed batches of scores with lease renewal, done —
plus a broker round trip, so cells/s here is the ceiling the bookkeeping puts on a fleet. An H100
scoring a 7B rater at ~40% MFU does roughly 120 cells/s; the printed "GPUs" column divides by it.
Batch size and job size are the defaults ($SELECTIT_BATCH_SIZE, $SELECTIT_JOB_TOKENS).
"""

from __future__ import annotations

import argparse
import json
import datetime as dt
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path[:0] = [str(ROOT), str(TESTS)]

from selectit.jobs import planner, runner
from selectit.scoring import registry
from selectit.store import db  # noqa: E402

#: cells/s of one H100 scoring a 7B rater at ~40% MFU (the issue's estimate)
GPU_CELLS_PER_S = 120.0


def fresh_db(admin_url: str) -> tuple[str, Callable[[], None]]:
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


def _demo_texts() -> list[tuple[str, str]]:
    recs = json.loads((ROOT / "selectit" / "data" / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    return [(r["instruction"] + ("\n" + r["input"] if r.get("input") else ""), r["output"]) for r in recs]


def synthetic(engine: sa.Engine, n: int, models: tuple[str, ...] = ("tiny",), first_id: int = 1,
              dataset: str = "synthetic", real_texts: bool = False) -> None:
    """`n` samples of 50–2000 characters in dataset `dataset`, the default prompt set, `models`
    (`real_texts`: the demo data's records, cycled)."""
    rnd = random.Random(first_id)
    demo = _demo_texts() if real_texts else []
    with db.session_scope(engine) as s:
        registry.ensure_default_prompts(s)  # what `selectit init` does
        ds = s.scalar(sa.text("INSERT INTO datasets (name) VALUES (:n) RETURNING id"), {"n": dataset})
        for name in models:
            if not s.scalar(sa.text("SELECT count(*) FROM models WHERE name = :n"), {"n": name}):
                s.execute(sa.text(
                    "INSERT INTO models (name, source, fingerprint, dtype, n_params, label_ids, max_tokens, active)"
                    " VALUES (:n, 'x', :n, 'bfloat16', 1, '{}', 2048, true)"), {"n": name})
        raw = s.connection().connection.driver_connection
        with raw.cursor() as cur:
            with cur.copy("COPY samples (id, content_hash, instruction, input, output, n_chars) FROM STDIN") as cp:
                for i in range(first_id, first_id + n):
                    if demo:
                        instruction, out = demo[i % len(demo)]
                        cp.write_row((i, f"{i:064x}", instruction, "", out, len(instruction) + len(out)))
                        continue
                    out = "o" * rnd.randint(40, 1990)
                    cp.write_row((i, f"{i:064x}", f"instruction {i}", "", out, len(out) + 12))
            with cur.copy("COPY dataset_samples (dataset_id, sample_id, position) FROM STDIN") as cp:
                for i in range(first_id, first_id + n):
                    cp.write_row((ds, i, i - first_id))
        s.execute(sa.text("SELECT setval(pg_get_serial_sequence('samples', 'id'), :m)"), {"m": first_id + n})
    with engine.begin() as c:
        c.exec_driver_sql("ANALYZE")


def n_scored(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return c.execute(sa.text("SELECT count(*) FROM scores WHERE status = 'ok'")).scalar()


def in_process(admin_url: str, n: int) -> float:
    url, drop = fresh_db(admin_url)
    engine = db.open_store(url)
    try:
        synthetic(engine, n)
        from scorer_hooks import instant

        t = time.perf_counter()
        out = runner.score_in_process(engine, scorer_for=runner.ScorerCache(instant))
        dt = time.perf_counter() - t
        assert out.scored == n * 5, out
        return out.scored / dt
    finally:
        engine.dispose()
        drop()


@dataclass
class Run:
    """One fleet run: its rate and what the servers spent on it."""

    cells: int
    jobs: int
    seconds: float
    pg_cpu_s: float  # CPU seconds of the PostgreSQL server's processes during the run
    wal_bytes: int
    redis_commands: int
    table_bytes: int = 0  # `scores` with its indexes and TOAST at the end of the run
    index_bytes: int = 0
    workers: int = 1
    worker_cpu_s: float = 0.0  # CPU seconds of the worker processes (all their threads) during the run
    phases: dict[str, float] = field(default_factory=dict)  # summed over the workers (scorer_hooks:gpu only)
    first_claim_s: float = 0.0  # from sending the jobs to the first claim: the fleet's start, paid once
    gpu_s_per_cell: float = 0.0  # the emulated GPU's seconds a cell (0: an instant scorer)
    before_first_s: float = 0.0  # summed over the workers: from sending the jobs to their first claim
    after_last_s: float = 0.0  # summed over the workers: from their last write to the fleet's

    @property
    def rate(self) -> float:
        return self.cells / self.seconds


def _proc_cpu(pid: int, children: bool = False) -> float:
    """CPU seconds of process `pid` (with `children`: also of its exited, waited-for children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12]) + (int(fields[13]) + int(fields[14]) if children else 0)
    return ticks / os.sysconf("SC_CLK_TCK")


def pg_server_cpu(engine: sa.Engine) -> float:
    """CPU seconds spent so far by the PostgreSQL server of `engine`: the postmaster with its exited
    children, plus each live child (backends, checkpointer, WAL writer …). Needs the server on this
    machine."""
    with engine.connect() as c:
        backend = c.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
    total = _proc_cpu(postmaster, children=True)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == postmaster:
                    total += _proc_cpu(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # it ended meanwhile
    return total


def wal_lsn(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return int(c.execute(sa.text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')")).scalar())


def make_schema(url: str, code: Path | None) -> None:
    """Migrate `url` to the head of the selectit at `code` (None: this checkout)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (code, ROOT) if p)}
    subprocess.run([sys.executable, "-c", "import sys; from selectit.store import db; db.upgrade(sys.argv[1])", url],
                   env=env, check=True, cwd=tempfile.gettempdir())


def fleet(admin_url: str, redis_url: str, tmp: Path, n: int, workers: int, *, scorer: str = "scorer_hooks:instant",
          code: Path | None = None, env_extra: dict[str, str] | None = None) -> Run:
    """`workers` Celery worker processes scoring `n` samples × 5 prompts, from sending the planned
    jobs to the last cell stored. `code`: the selectit checkout the workers run (None: this one)."""
    import redis

    rds = redis.Redis.from_url(redis_url)
    rds.flushdb()
    url, drop = fresh_db(admin_url)
    make_schema(url, code)
    engine = db.make_engine(url)
    synthetic(engine, n, real_texts="SELECTIT_TEST_TOKENIZER" in (env_extra or {}))
    path = os.pathsep.join(str(p) for p in (code, ROOT, TESTS) if p)
    phases_dir = tmp / f"phases-{uuid.uuid4().hex[:8]}"
    phases_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": path, "SELECTIT_DATABASE_URL": url,
           "SELECTIT_BROKER_URL": redis_url, "SELECTIT_SCORER": scorer, "SELECTIT_TEST_PHASES": str(phases_dir),
           **(env_extra or {})}
    procs, logs = [], [tmp / f"w{i}.log" for i in range(workers)]
    try:
        for i, log in enumerate(logs):
            # the model queue only: this benchmark plans and sends the jobs itself, at t0
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "selectit.workers.app", "worker", "-Q", "model.tiny",
                 "--pool", "solo", "-n", f"b{i}@%h", "--without-gossip", "--without-mingle", "-l", "INFO"],
                env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=tmp))  # noqa: SIM115
        deadline = time.time() + 600
        while not all(" ready." in log.read_text() for log in logs):
            assert time.time() < deadline and all(p.poll() is None for p in procs), "the workers did not start"
            time.sleep(0.2)
        from selectit.settings import Settings
        from selectit.workers.app import fleet_of, make_app

        fleet = fleet_of(make_app(Settings(broker_url=redis_url)))
        fleet.queue_length("model.tiny")  # this client's broker connection is made before the clock starts
        job_ids = planner.plan(engine)
        cpu0, wal0, cmd0 = pg_server_cpu(engine), wal_lsn(engine), rds.info("stats")["total_commands_processed"]
        wcpu0 = sum(_proc_cpu(p.pid) for p in procs)
        t0 = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        fleet.send_jobs(job_ids, engine)
        while n_scored(engine) < n * 5:
            assert time.time() < deadline, "the fleet did not finish"
            time.sleep(0.5)
        cpu1, wal1, cmd1 = pg_server_cpu(engine), wal_lsn(engine), rds.info("stats")["total_commands_processed"]
        wcpu1 = sum(_proc_cpu(p.pid) for p in procs)
        with engine.connect() as c:  # the last cell's write time: the poll's granularity is not counted
            last = c.execute(sa.text("SELECT max(scored_at) FROM scores")).scalar()
            first_claim = c.execute(sa.text("SELECT min(started_at) FROM jobs")).scalar()
            # each worker's wait for its first job, and its idle time after its last write
            firsts = dict(c.execute(sa.text("SELECT worker, min(started_at) FROM jobs GROUP BY worker")).all())
            lasts = dict(c.execute(sa.text("SELECT worker, max(scored_at) FROM scores GROUP BY worker")).all())
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.exec_driver_sql("VACUUM ANALYZE scores")  # the table's size at rest (free space map, no dead rows)
            size, index = c.execute(sa.text(
                "SELECT pg_total_relation_size('scores'), pg_indexes_size('scores')")).one()
        run = Run(n * 5, len(job_ids), (last - t0).total_seconds(), cpu1 - cpu0, wal1 - wal0, cmd1 - cmd0,
                  size, index, workers, wcpu1 - wcpu0, first_claim_s=(first_claim - t0).total_seconds(),
                  before_first_s=sum((firsts.get(w, last) - t0).total_seconds() for w in lasts),
                  after_last_s=sum((last - lasts[w]).total_seconds() for w in lasts))
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        engine.dispose()
        drop()
    run.phases = _phases(phases_dir)  # written by each worker as it exited
    return run


def _phases(folder: Path) -> dict[str, float]:
    """The workers' phases (`selectit.timing`) summed, with the emulated GPU's asked and slept seconds."""
    total: dict[str, float] = {}
    for f in folder.glob("*.json"):
        data = json.loads(f.read_text())
        for name, sec in [*data["phases"].items(), ("GPU asked", data["asked"]), ("GPU slept", data["slept"])]:
            total[name] = total.get(name, 0.0) + sec
    return total


def breakdown(r: Run) -> str:
    """Where the workers' time went, as shares of (workers × the run's seconds): the phases of the
    scoring thread, the emulated GPU's sleep, and the CPU the workers and PostgreSQL used."""
    if not r.phases:
        return "    (no phases: the workers wrote none)"
    wall = r.workers * r.seconds
    p = r.phases
    share = lambda sec: f"{100 * sec / wall:4.1f}%"  # noqa: E731
    tops = {k: v for k, v in p.items() if ": " not in k and not k.startswith("GPU ")}
    parts = [f"scoring {share(tops.pop('scoring', 0.0))} (GPU asked {share(p.get('GPU asked', 0.0))}, "
             f"overslept {share(p.get('GPU slept', 0.0) - p.get('GPU asked', 0.0))})"]
    parts += [f"{k} {share(v)}" for k, v in sorted(tops.items(), key=lambda kv: -kv[1])]
    beside = {k.split(": ", 1)[1]: v for k, v in p.items() if k.startswith("scoring: ")}
    outside = wall - sum(v for k, v in p.items() if ": " not in k and not k.startswith("GPU "))
    between = outside - r.before_first_s - r.after_last_s
    parts.append(f"outside any phase {share(outside)}: before the worker's first claim {share(r.before_first_s)}, "
                 f"idle after its last write {share(r.after_last_s)}, the rest (Celery, broker) {share(between)}")
    cores = os.cpu_count() or 1
    lines = [f"    workers' time ({r.workers} × {r.seconds:.1f} s): " + ", ".join(parts),
             f"    the first job was claimed {1000 * r.first_claim_s:.0f} ms after the jobs were sent (a start paid "
             f"once); from that claim on: {100 * r.cells * r.gpu_s_per_cell / (wall - r.workers * r.first_claim_s):.1f}% "
             "of ideal"]
    if beside:
        lines.append("    beside the scoring thread: " + ", ".join(f"{k} {share(v)}" for k, v in beside.items()))
    lines.append(f"    CPU: workers {r.worker_cpu_s:.1f} s + PostgreSQL {r.pg_cpu_s:.1f} s = "
                 f"{100 * (r.worker_cpu_s + r.pg_cpu_s) / (cores * r.seconds):.0f}% of {cores} cores over the run")
    return "\n".join(lines)


def gpu_runs(args: argparse.Namespace) -> None:
    """Emulated-GPU fleets: each run's cells/s as a share of the ideal, before (--baseline) and after."""
    with tempfile.TemporaryDirectory() as d:
        variants = [("baseline", installed(args.baseline, Path(d)))] if args.baseline else []
        variants.append(("this checkout", this_checkout(Path(d))))
        gpu_fleets(args, variants, Path(d))


def installed(where: str, tmp: Path) -> Path:
    """The selectit to run as the baseline: a directory it is installed in (`pip install --target`),
    or a git ref of this repository, exported and installed into `tmp`."""
    if Path(where).is_dir():
        return Path(where).resolve()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{where}^{{commit}}"],
                            capture_output=True, text=True, check=True).stdout.strip()
    src = tmp / f"src-{commit[:10]}"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    print(f"baseline: {where} = commit {commit[:10]}, exported and installed on its own")
    return _pip_target(src, tmp / f"site-{commit[:10]}")


def this_checkout(tmp: Path) -> Path | None:
    """None where this checkout's `selectit.workers` is what Python imports; else (a git worktree
    beside an editable install of another checkout) this working tree installed into `tmp`."""
    import importlib.util

    spec = importlib.util.find_spec("selectit.workers")
    if spec is not None and spec.origin and Path(spec.origin).resolve().is_relative_to(ROOT):
        return None
    src = tmp / "src-this"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", "build", "*.egg-info"))
    print(f"this checkout: {ROOT} (its working tree), installed on its own: this Python imports "
          f"selectit.workers from {spec.origin if spec else 'nowhere'}")
    return _pip_target(src, tmp / "site-this")


def _pip_target(src: Path, target: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(src)], check=True, cwd=tempfile.gettempdir())
    return target


def gpu_fleets(args: argparse.Namespace, variants: list[tuple[str, Path | None]], tmp: Path) -> None:
    """Each worker count, the variants alternating: share of ideal, the servers' cost, where the time went."""
    ms = args.gpu_ms_per_cell
    extra = {"SELECTIT_TEST_GPU_MS": str(ms)}
    if args.tokenize:
        from selectit.scoring.loading import model_dir, resolve_source

        extra["SELECTIT_TEST_TOKENIZER"] = str(model_dir(resolve_source(args.tokenize)))
    print(f"emulated GPU: {ms:g} ms a cell ({1000 / ms:.0f} cells/s per worker), {args.samples} samples × 5 prompts "
          "per worker, default batch and job sizes, PostgreSQL + Redis on this machine"
          + (f"; each request tokenized by {args.tokenize}'s tokenizer, on the demo data's texts:" if args.tokenize
             else ":"))
    best: dict[tuple[int, str], Run] = {}
    for w in (int(x) for x in args.workers.split(",")):
        ideal = w * 1000 / ms
        for _ in range(args.repeat):  # the variants alternate, so a burst of other load hits both
            for label, code in variants:
                r = fleet(args.postgres, args.redis, tmp, args.samples * w, w, scorer="scorer_hooks:gpu",
                          code=code, env_extra=extra)
                r.gpu_s_per_cell = ms / 1000
                if (w, label) not in best or r.rate > best[w, label].rate:
                    best[w, label] = r
                print(f"  {w} worker{'s' if w > 1 else ' '} {label:13}: {r.rate:7.0f} cells/s = "
                      f"{100 * r.rate / ideal:5.1f}% of ideal {ideal:.0f} | per stored cell: PostgreSQL "
                      f"{1e6 * r.pg_cpu_s / r.cells:5.0f} µs CPU, {r.wal_bytes / r.cells:5.0f} B WAL | Redis "
                      f"{r.redis_commands / r.jobs:4.0f} commands per job ({r.jobs} jobs, {r.seconds:.1f} s, "
                      f"load {os.getloadavg()[0]:.1f}) | scores: {r.table_bytes / r.cells:.0f} B a row, "
                      f"{r.index_bytes / r.cells:.0f} B of it indexes", flush=True)
                print(breakdown(r), flush=True)
    print(f"best of {args.repeat} (share of ideal):")
    for (w, label), r in best.items():
        print(f"  {w} worker{'s' if w > 1 else ' '} {label:13}: {100 * r.rate / (w * 1000 / ms):5.1f}%")


def plan_at_scale(admin_url: str, n: int) -> tuple[float, int, float, float]:
    """(first plan s, jobs, re-plan s, full re-plan pass s) at n samples × 5 prompts × 2 models."""
    url, drop = fresh_db(admin_url)
    engine = db.open_store(url)
    try:
        synthetic(engine, n, models=("small", "large"))
        t = time.perf_counter()
        ids = planner.plan(engine)
        first = time.perf_counter() - t
        t = time.perf_counter()
        assert planner.plan(engine) == []
        again = time.perf_counter() - t
        planner.forget_settled()  # the pass a changed input (a new dataset, a failed cell) costs
        t = time.perf_counter()
        assert planner.plan(engine) == []
        full = time.perf_counter() - t
        return first, len(ids), again, full
    finally:
        engine.dispose()
        drop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postgres", required=True, help="admin URL of a PostgreSQL server")
    ap.add_argument("--redis", required=True)
    ap.add_argument("--samples", type=int, default=4000, help="samples scored (× 5 prompts) per variant")
    ap.add_argument("--workers", default="1,2,4", help="worker counts to measure")
    ap.add_argument("--plan-samples", type=int, default=1_000_000)
    ap.add_argument("--skip-scoring", action="store_true", help="only the planning benchmark")
    ap.add_argument("--skip-planning", action="store_true", help="only the scoring benchmark")
    ap.add_argument("--gpu-ms-per-cell", type=float, default=None, metavar="MS",
                    help="emulate a GPU of MS ms a cell; --samples is then per worker")
    ap.add_argument("--repeat", type=int, default=1, help="with --gpu-ms-per-cell: runs of each fleet (best kept)")
    ap.add_argument("--tokenize", default=None, metavar="MODEL",
                    help="with --gpu-ms-per-cell: the emulated GPU first tokenizes each request with MODEL's "
                         "tokenizer (a model source, e.g. smollm2-135m), as an engine does, over the demo "
                         "data's texts: whether the tokenizer's time is hidden")
    ap.add_argument("--baseline", default=None, metavar="REF|DIR",
                    help="with --gpu-ms-per-cell: run each fleet first on another selectit: a git ref of this "
                         "repository (exported and installed on its own, e.g. HEAD~1 or main), or a directory "
                         "one is installed in")
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    if args.gpu_ms_per_cell and not args.skip_scoring:
        gpu_runs(args)
    elif not args.skip_scoring:
        cells = args.samples * 5
        rate_in = in_process(args.postgres, args.samples)
        print(f"{cells:,} cells, instant scorer, PostgreSQL, default batch and job sizes:")
        print(f"  in-process selectit score : {rate_in:8.0f} cells/s")
        with tempfile.TemporaryDirectory() as d:
            rates = {}
            for w in (int(x) for x in args.workers.split(",")):
                rates[w] = fleet(args.postgres, args.redis, Path(d), args.samples, w).rate
                base = rates[min(rates)]
                print(f"  {w} celery worker{'s' if w > 1 else ' '}          : {rates[w]:8.0f} cells/s "
                      f"({rates[w] / w:6.0f} per worker, {rates[w] / base:4.2f}x {min(rates)} worker, "
                      f"= {rates[w] / GPU_CELLS_PER_S:4.0f} GPUs at {GPU_CELLS_PER_S:.0f} cells/s)")
        counts = sorted(rates)
        knee = next((a for a, b in zip(counts, counts[1:]) if rates[b] < 1.1 * rates[a]), None)
        if knee is None:
            print(f"  not saturated at {counts[-1]} workers (each step added 10% or more)")
        else:
            print(f"  saturates at {knee} worker(s), {rates[knee]:.0f} cells/s: more workers add less than 10% "
                  f"(workers, PostgreSQL and Redis share this machine's {os.cpu_count()} CPUs)")
    if not args.skip_planning:
        first, n_jobs, again, full = plan_at_scale(args.postgres, args.plan_samples)
        print(f"plan {args.plan_samples:,} samples x 5 prompts x 2 models on PostgreSQL: {first:.1f} s "
              f"({n_jobs} jobs, {args.plan_samples * 10:,} cells); planning again: {again:.2f} s, 0 new jobs "
              f"(a full pass, as after a new dataset elsewhere or a failed cell: {full:.1f} s)")


if __name__ == "__main__":
    main()
