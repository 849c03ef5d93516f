"""The Celery fleet: real `celery worker` processes, a real Redis, PostgreSQL
(and SQLite for one machine), the tiny test model on CPU; plus the docker-compose file.

Workers score through tests/scorer_hooks.py, which logs every computed cell, so "every cell
exactly once" is checked on what was computed, not only on what was stored.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from test_runner import DEMO, add_model, computed, seed, tiny_dir  # noqa: F401 - tiny_dir is a fixture

from selectit.scoring import registry
from selectit.store import db
from selectit.store.schema import Job, Score

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
WAIT = 150  # seconds: the bound of every wait, far above a normal run on 2 cores


class Fleet:
    """Celery worker processes of one test; everything is stopped at the end."""

    def __init__(self, tmp: Path, db_url: str, broker: str, **env: str) -> None:
        self.tmp, self.procs = tmp, {}
        self.log = tmp / "cells.log"
        self.env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}",
                    "SELECTIT_DATABASE_URL": db_url, "SELECTIT_BROKER_URL": broker,
                    "SELECTIT_SCORER": "scorer_hooks:load", "SELECTIT_TEST_LOG": str(self.log),
                    "SELECTIT_PLAN_INTERVAL": "1", "SELECTIT_REQUEUE_INTERVAL": "1",
                    "SELECTIT_LEASE_SECONDS": "4", "SELECTIT_JOB_TOKENS": "600", **env}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        out = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "selectit.workers.app", *args],
                                env=self.env, stdout=out, stderr=subprocess.STDOUT, cwd=self.tmp)
        self.procs[name] = proc
        return proc

    def selectit(self, name: str, *args: str) -> subprocess.Popen:
        """A `selectit` command of the fleet's environment (`selectit worker …`), logged like the others."""
        out = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "selectit", *args], env=self.env, stdout=out,
                                stderr=subprocess.STDOUT, cwd=self.tmp)
        self.procs[name] = proc
        return proc

    def worker(self, name: str, queues: str = "model.tiny,model.tiny2,control") -> subprocess.Popen:
        return self.start(name, "worker", "-Q", queues, "--pool", "solo", "-n", f"{name}@%h",
                          "--without-gossip", "--without-mingle", "-l", "INFO")

    def output(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, *names: str) -> None:
        wait_for(lambda: all(" ready." in self.output(n) for n in names), f"workers {names} to start", self)

    def describe(self) -> str:
        return "\n".join(f"--- {n} (rc={p.poll()}):\n{self.output(n)[-3000:]}" for n, p in self.procs.items())

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(cond: Callable[[], bool], what: str, fleet: Fleet | None = None, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{fleet.describe() if fleet else ''}")
        time.sleep(0.3)


@pytest.fixture
def fleet(tmp_path, redis_url) -> Iterator[Callable[..., Fleet]]:
    made: list[Fleet] = []

    def make(db_url: str, broker: str = redis_url, **env: str) -> Fleet:
        import redis

        redis.Redis.from_url(broker).flushdb()  # no messages of an earlier test
        made.append(Fleet(tmp_path, db_url, broker, **env))
        return made[-1]

    yield make
    for f in made:
        f.stop()


def scores(engine: sa.Engine) -> dict[tuple[int, int, int], tuple[str, int, str | None]]:
    with db.session_scope(engine) as session:
        return {(r.sample_id, r.model_id, r.prompt_id): (r.status, r.attempts, r.worker)
                for r in session.scalars(sa.select(Score))}


def settled(engine: sa.Engine, n_cells: int) -> Callable[[], bool]:
    """All n cells stored: ok, or failed at the attempt limit (3)."""
    def check() -> bool:
        rows = scores(engine)
        return len(rows) == n_cells and all(s == "ok" or a >= 3 for s, a, _ in rows.values())
    return check


def test_two_workers_fill_a_dataset_once_then_pick_up_a_new_model_and_dataset(
        db_url, engine, tmp_path, tiny_dir, fleet) -> None:
    f = fleet(db_url, SELECTIT_TEST_POISON="POISON", SELECTIT_TEST_DELAY="0.3")
    f.worker("w1"), f.worker("w2")
    f.wait_ready("w1", "w2")
    first = [dict(r) for r in DEMO[:8]]
    first[3]["instruction"] = "POISON " + first[3]["instruction"]
    seed(engine, tmp_path, "d1", first)
    m1 = add_model(engine, "tiny", tiny_dir)
    # nobody runs a command: the workers' control loop plans, and re-plans the failed cells
    wait_for(settled(engine, 8 * 5), "the first dataset to be scored", f)

    rows = scores(engine)
    failed = {k for k, v in rows.items() if v[0] == "failed"}
    assert len(failed) == 5 and {rows[k][1] for k in failed} == {3}  # the poisoned sample, 3 attempts
    assert len({v[2].split(":")[1] for v in rows.values()}) == 2  # both worker processes scored
    with db.session_scope(engine) as session:
        errors = set(session.scalars(sa.select(Score.error).where(Score.status == "failed")))
    assert errors == {"RuntimeError: injected failure"}

    # while the workers run: a new dataset (2 samples shared with the first) and a second model
    seed(engine, tmp_path, "d2", DEMO[6:12])
    m2 = add_model(engine, "tiny2", tiny_dir)
    wait_for(settled(engine, 12 * 5 * 2), "the new dataset and model to be scored", f)
    rows = scores(engine)
    assert {m for _, m, _ in rows} == {m1, m2}
    assert sum(1 for v in rows.values() if v[0] == "failed") == 10  # the poison sample, both models
    log = computed(f.log)
    assert set(log) == {k for k, v in rows.items() if v[0] == "ok"}
    assert max(log.values()) == 1, "a cell was computed twice"
    assert "database is locked" not in f.describe()
    # the last batch is committed a moment before its job is marked done
    wait_for(lambda: {j.status for j in _jobs(engine)} == {"done"}, "every job to be done", f)


def test_a_killed_worker_s_job_is_requeued_and_finished_by_the_other(
        postgres_url, tmp_path, tiny_dir, fleet) -> None:
    engine = db.open_store(postgres_url)
    f = fleet(postgres_url, SELECTIT_TEST_DELAY="0.7", SELECTIT_BATCH_SIZE="1", SELECTIT_JOB_TOKENS="100000")
    procs = {"w1": f.worker("w1"), "w2": f.worker("w2")}
    f.wait_ready("w1", "w2")
    seed(engine, tmp_path, "d", DEMO[:6])
    add_model(engine, "tiny", tiny_dir)
    wait_for(lambda: len(scores(engine)) >= 10, "the one job to be half done", f)
    holder = next(v[2] for v in scores(engine).values())
    victim = next(n for n, p in procs.items() if holder.endswith(f":{p.pid}"))
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait()
    written = scores(engine)
    assert len(written) < 30, "the job finished before its worker was killed"

    wait_for(settled(engine, 30), "the other worker to finish the job", f)
    rows = scores(engine)
    assert {v[:2] for v in rows.values()} == {("ok", 1)}
    survivor = {v[2] for k, v in rows.items() if k not in written}
    assert len(survivor) == 1 and holder not in survivor
    log = computed(f.log)
    for cell in written:  # what the killed worker committed was not computed again
        assert log[cell] == 1, cell
    with db.session_scope(engine) as session:
        (job,) = session.scalars(sa.select(Job)).all()
    assert (job.status, job.attempts) == ("done", 2)


def test_a_worker_killed_while_holding_a_job_claimed_ahead_loses_neither_job(
        postgres_url, tmp_path, tiny_dir, fleet) -> None:
    """A worker claims the next job while its job's last batches score; SIGKILLed then, it holds two
    running jobs. Both go back to the queue (their holder on this host is dead) and another worker
    scores them: every committed cell once, nothing of the job claimed ahead scored before."""
    engine = db.open_store(postgres_url)
    seed(engine, tmp_path, "d", DEMO[:8])
    add_model(engine, "tiny", tiny_dir)
    with db.session_scope(engine) as session:
        per_sample = max(session.scalars(sa.text(
            "SELECT SUM((s.n_chars + LENGTH(p.template)) / 4) FROM samples s CROSS JOIN prompts p "
            "WHERE p.active GROUP BY s.id")))
    # jobs of two samples or more, a batch of one sample each: the last batches are a window to kill in
    f = fleet(postgres_url, SELECTIT_TEST_DELAY="0.7", SELECTIT_BATCH_SIZE="1",
              SELECTIT_JOB_TOKENS=str(2 * per_sample))
    w1 = f.worker("w1")
    f.wait_ready("w1")
    holder = f"{socket.gethostname()}:{w1.pid}"

    def held() -> list[Job]:
        return [j for j in _jobs(engine) if j.status == "running" and j.worker == holder]

    def frozen_holding_two() -> bool:  # stopped (not yet killed) while it holds two jobs
        if len(held()) < 2:
            return False
        w1.send_signal(signal.SIGSTOP)
        time.sleep(0.2)  # a commit already on its way lands
        if len(held()) == 2:
            return True
        w1.send_signal(signal.SIGCONT)
        return False

    wait_for(frozen_holding_two, "the worker to hold a job claimed ahead", f)
    jobs = {j.id: j for j in held()}
    w1.send_signal(signal.SIGKILL)
    w1.wait()
    written = scores(engine)
    ahead = max(jobs, key=lambda i: jobs[i].started_at)  # claimed while the other's last batches scored
    assert not {s for s, _, _ in written} & set(jobs[ahead].sample_ids)  # nothing of it scored yet

    f.worker("w2")
    wait_for(settled(engine, 8 * 5), "the other worker to finish both jobs", f)
    rows = scores(engine)
    assert {v[:2] for v in rows.values()} == {("ok", 1)}
    log = computed(f.log)
    for cell in written:  # what the killed worker committed was not computed again
        assert log[cell] == 1, cell
    after = {j.id: j for j in _jobs(engine)}
    assert {(after[i].status, after[i].attempts) for i in jobs} == {("done", 2)}
    assert all(j.status == "done" for j in after.values())


def test_selectit_worker_serves_its_model_queue(postgres_url, tmp_path, tiny_dir, fleet) -> None:
    engine = db.open_store(postgres_url)
    seed(engine, tmp_path, "d", DEMO[:6])
    add_model(engine, "tiny", tiny_dir)
    f = fleet(postgres_url)
    f.selectit("worker", "worker", "--model", "tiny", "--no-control")
    f.wait_ready("worker")
    assert ".> model.tiny" in f.output("worker") and ".> control" not in f.output("worker")
    plan = subprocess.run([sys.executable, "-m", "selectit", "plan", "--model", "tiny"], env=f.env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=WAIT)
    assert plan.returncode == 0 and "sent" in plan.stdout, plan.stdout + plan.stderr
    wait_for(settled(engine, 6 * 5), "`selectit worker` to score the planned jobs", f)
    rows = scores(engine)
    assert {v[:2] for v in rows.values()} == {("ok", 1)}
    assert {v[2].split(":")[1] for v in rows.values()} == {str(f.procs["worker"].pid)}
    with db.session_scope(engine) as session:
        assert set(session.scalars(sa.select(Job.status))) == {"done"}


def test_selectit_worker_refuses_an_unknown_model(postgres_url, tmp_path, tiny_dir) -> None:
    engine = db.open_store(postgres_url)
    add_model(engine, "tiny", tiny_dir)
    out = subprocess.run([sys.executable, "-m", "selectit", "--db", postgres_url, "worker", "--model", "gpt"],
                         capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 1
    assert out.stderr.startswith("Error: no active model named 'gpt' (models: tiny). Run `selectit model add gpt")

def _jobs(engine: sa.Engine) -> list[Job]:
    with db.session_scope(engine) as session:
        rows = session.scalars(sa.select(Job).order_by(Job.id)).all()
        session.expunge_all()
        return list(rows)


def test_control_work_never_waits_behind_model_jobs(postgres_url, tmp_path, tiny_dir, fleet) -> None:
    """`selectit worker --model tiny` processes (the model queue + control) and nothing else, jobs
    far longer than the intervals: a SIGKILLed worker's job is requeued within lease + requeue
    interval (+ one batch), and a dataset ingested while jobs are queued is planned within one
    plan interval — the control work does not wait for the queue to drain."""
    engine = db.open_store(postgres_url)
    lease, requeue_every, plan_every, batch = 3.0, 1.0, 2.0, 0.5
    slack = 8.0  # process start-up and a loaded 2-core machine; a job below lasts far longer
    seed(engine, tmp_path, "d1", DEMO[:80])
    add_model(engine, "tiny", tiny_dir)
    with db.session_scope(engine) as session:
        registry.ensure_default_prompts(session)
    with db.session_scope(engine) as session:
        per_sample = max(session.scalars(sa.text(
            "SELECT SUM((s.n_chars + LENGTH(p.template)) / 4) FROM samples s CROSS JOIN prompts p "
            "WHERE p.active GROUP BY s.id")))
    # jobs of 12 samples or more: 12+ batches of `batch` seconds, far above every interval
    f = fleet(postgres_url, SELECTIT_TEST_DELAY=str(batch), SELECTIT_BATCH_SIZE="1",
              SELECTIT_JOB_TOKENS=str(12 * per_sample), SELECTIT_LEASE_SECONDS=str(lease),
              SELECTIT_REQUEUE_INTERVAL=str(requeue_every), SELECTIT_PLAN_INTERVAL=str(plan_every))
    procs = {n: f.selectit(n, "worker", "--model", "tiny") for n in ("w1", "w2")}
    f.wait_ready("w1", "w2")
    assert ".> control" in f.output("w1") and "mingle: searching" not in f.output("w1")  # no mingle

    def busy() -> list[Job]:  # running jobs that have written a cell
        done = {s for s, _, _ in scores(engine)}
        return [j for j in _jobs(engine) if j.status == "running" and done & set(j.sample_ids)]

    wait_for(lambda: len(busy()) == 2, "both workers to be inside a job", f)
    victim_job = busy()[0]
    victim = next(n for n, p in procs.items() if victim_job.worker.endswith(f":{p.pid}"))
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait()
    killed_at = time.monotonic()
    assert any(j.status == "queued" for j in _jobs(engine)), f"nothing queued: {_jobs(engine)}"

    def requeued() -> bool:
        (job,) = [j for j in _jobs(engine) if j.id == victim_job.id]
        return job.status != "running" or job.worker != victim_job.worker
    wait_for(requeued, "the killed worker's job to be requeued", f, timeout=lease + requeue_every + batch + slack)
    print(f"requeued {time.monotonic() - killed_at:.1f} s after the kill")

    # a new dataset while the survivor is inside a job and others wait in the queue
    seed(engine, tmp_path, "d2", DEMO[100:104])
    with db.session_scope(engine) as session:
        new = set(session.scalars(sa.text("SELECT sample_id FROM dataset_samples ds JOIN datasets d "
                                          "ON d.id = ds.dataset_id WHERE d.name = 'd2'")))
    assert any(j.status == "queued" for j in _jobs(engine))
    wait_for(lambda: any(new & set(j.sample_ids) for j in _jobs(engine)), "the new dataset to be planned",
             f, timeout=plan_every + slack)
    assert any(j.status == "queued" for j in _jobs(engine) if not new & set(j.sample_ids)), \
        "the queue drained before the new dataset was planned"
    assert "Discarding revoked task" not in f.output("w1") + f.output("w2")


def test_one_worker_of_the_fleet_takes_each_tick(redis_url) -> None:
    import redis
    from selectit.workers.control import RedisGate

    redis.Redis.from_url(redis_url).flushdb()
    a, b = RedisGate(redis_url), RedisGate(redis_url)
    assert a.take("plan", 5) and not b.take("plan", 5) and not a.take("plan", 5)
    assert b.take("requeue-expired", 5)
    assert RedisGate("memory://").take("plan", 5)  # not Redis: no fleet to share the tick with
    assert RedisGate(f"redis://127.0.0.1:{_free_port()}/0").take("plan", 5)  # Redis away: the tick runs


def test_the_control_loop_survives_a_failing_tick() -> None:
    from selectit.workers.control import ControlLoop, Tick

    runs: list[float] = []

    def flaky() -> None:
        runs.append(time.monotonic())
        if len(runs) == 1:
            raise RuntimeError("the database is away")

    loop = ControlLoop([Tick("flaky", 0.05, flaky)])
    loop.start()
    try:
        wait_for(lambda: len(runs) >= 3, "the tick to run again after failing")
    finally:
        loop.stop()
    n = len(runs)
    time.sleep(0.2)
    assert len(runs) == n  # stopped


def test_a_failing_tick_logs_each_distinct_error_once_keeps_its_schedule_and_is_recorded(caplog) -> None:
    from selectit.workers.control import ControlLoop, Tick

    runs: list[float] = []
    recorded: list[tuple[str, str | None]] = []

    def failing() -> None:
        runs.append(time.monotonic())
        if len(runs) <= 4:
            raise RuntimeError("the database is away")
        if len(runs) <= 6:
            raise ConnectionError("the broker is away")

    loop = ControlLoop([Tick("plan", 0.05, failing)], record=lambda name, _at, _s, err: recorded.append((name, err)))
    with caplog.at_level("INFO", logger="selectit.workers.control"):
        loop.start()
        try:
            wait_for(lambda: len(runs) >= 8, "the failing tick to keep running")
        finally:
            loop.stop()
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage().split(": ", 1)[1].split(" (")[0] for r in errors] == [
        "RuntimeError: the database is away", "ConnectionError: the broker is away"]
    assert all(r.exc_info for r in errors)  # each distinct error once, with its traceback
    assert any("control tick plan recovered" in r.getMessage() for r in caplog.records)
    assert recorded[:7] == [("plan", "RuntimeError: the database is away")] * 4 + [
        ("plan", "ConnectionError: the broker is away")] * 2 + [("plan", None)]


def test_the_control_loop_of_a_worker_inside_a_long_job_on_sqlite_keeps_ticking(
        sqlite_url, tmp_path, tiny_dir, fleet) -> None:
    """One worker, one long job (batches of one sample, 0.5 s each): while it runs, the worker's
    control thread plans every interval and records each tick; `selectit status` shows them."""
    db.upgrade(sqlite_url)
    engine = db.open_store(sqlite_url)
    seed(engine, tmp_path, "d", DEMO[:12])
    add_model(engine, "tiny", tiny_dir)
    f = fleet(sqlite_url, SELECTIT_TEST_DELAY="0.5", SELECTIT_BATCH_SIZE="1", SELECTIT_JOB_TOKENS="1000000",
              SELECTIT_PLAN_INTERVAL="0.5", SELECTIT_REQUEUE_INTERVAL="0.5", SELECTIT_LEASE_SECONDS="60")
    w = f.worker("w1", "model.tiny,control")
    f.wait_ready("w1")

    def job() -> Job | None:
        jobs = _jobs(engine)
        return jobs[0] if jobs else None

    def plan_tick() -> tuple[int, dt.datetime, str] | None:
        with db.session_scope(engine) as session:
            row = session.execute(sa.text("SELECT runs, started_at, worker FROM control_ticks "
                                          "WHERE name = 'plan'")).first()
        return None if row is None else (row[0], _as_datetime(row[1]), row[2])

    wait_for(lambda: job() is not None and job().status == "running" and scores(engine), "the job to start", f)
    first = plan_tick()
    assert first is not None, f.describe()
    log_before = f.output("w1").count("control tick plan ran")
    wait_for(lambda: plan_tick()[0] >= first[0] + 3, "three more plan ticks while the job runs", f)
    latest = plan_tick()
    assert job().status == "running" and len(scores(engine)) < 12 * 5, "the job ended before three ticks"
    assert latest[1] > first[1] and latest[2] == f"{socket.gethostname()}:{w.pid}"
    # each plan is logged (a tick may run between the two reads above: the log is waited for)
    wait_for(lambda: f.output("w1").count("control tick plan ran") >= log_before + 3, "three plan log lines", f)
    out = subprocess.run([sys.executable, "-m", "selectit", "--db", sqlite_url, "status"], env=f.env,
                         cwd=tmp_path, capture_output=True, text=True, timeout=WAIT)
    assert out.returncode == 0, out.stderr
    assert "control ticks" in out.stdout and f"{w.pid}" in out.stdout, out.stdout
    for name in ("plan", "requeue-expired"):
        assert name in out.stdout
    wait_for(settled(engine, 12 * 5), "the job to finish", f)
    assert "database is locked" not in f.describe()


def _as_datetime(value: object) -> dt.datetime:
    return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis(port: int, tmp: Path) -> subprocess.Popen:
    proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    wait_for(lambda: _listening(port), "redis-server to listen")
    return proc


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_a_redis_restart_mid_run_loses_nothing(postgres_url, tmp_path, tiny_dir, fleet) -> None:
    engine = db.open_store(postgres_url)
    port = _free_port()
    server = _redis(port, tmp_path)
    try:
        f = fleet(postgres_url, broker=f"redis://127.0.0.1:{port}/0", SELECTIT_TEST_DELAY="0.5",
                  SELECTIT_BATCH_SIZE="1")
        f.worker("w1")
        f.wait_ready("w1")
        seed(engine, tmp_path, "d", DEMO[:8])
        add_model(engine, "tiny", tiny_dir)
        wait_for(lambda: len(scores(engine)) >= 5, "scoring to start", f)
        server.terminate()  # no persistence: every queued message is lost
        server.wait()
        time.sleep(1)
        server = _redis(port, tmp_path)
        wait_for(settled(engine, 40), "the run to complete after the restart", f)
        rows = scores(engine)
        assert {v[:2] for v in rows.values()} == {("ok", 1)}
        with db.session_scope(engine) as session:
            assert set(session.scalars(sa.select(Job.status))) == {"done"}
    finally:
        server.terminate()
        server.wait()


# ------------------------------------------------------------------------------------ compose file


COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
ENV_EXAMPLE = (ROOT / ".env.example").read_text()


def test_compose_has_the_fleet_services() -> None:
    services = COMPOSE["services"]
    assert {"postgres", "redis", "migrate", "worker", "control", "flower"} <= set(services)
    assert "beat" not in services  # the control worker's control loop keeps the clock
    assert "healthcheck" in services["postgres"] and "healthcheck" in services["redis"]
    assert services["migrate"]["restart"] == "no"
    for name in ("worker", "control"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert "${SELECTIT_MODEL_SOURCE" in json.dumps(services["worker"])


def test_compose_bakes_in_no_secret_and_keeps_redis_inside() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    assert "ports" not in COMPOSE["services"]["redis"]  # reachable on the compose network only
    for var in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "FLOWER_PASSWORD"):
        assert f"${{{var}:?" in text, f"{var} must come from the environment"
        (value,) = [line.split("=", 1)[1] for line in ENV_EXAMPLE.splitlines() if line.startswith(f"{var}=")]
        assert value.startswith("change-me") and value not in text
    assert "requirepass" in json.dumps(COMPOSE["services"]["redis"]["command"])


def test_workers_json_only_acks_late_prefetch_one() -> None:
    from selectit.settings import Settings
    from selectit.workers.app import fleet_of, make_app

    app = make_app(Settings(broker_url="memory://", plan_interval=7.0))
    conf = app.conf
    assert conf.task_serializer == "json" and list(conf.accept_content) == ["json"]
    assert conf.task_acks_late and conf.worker_prefetch_multiplier == 1 and conf.worker_pool == "solo"
    assert conf.beat_schedule == {}  # the control loop of the workers keeps the clock
    assert conf.broker_url == "memory://"
    assert {(t.name, t.interval) for t in fleet_of(app).control_ticks()} == {("plan", 7.0), ("requeue-expired", 30.0)}
    assert {"selectit.plan", "selectit.score_job", "selectit.requeue_expired"} <= set(app.tasks)


def test_the_app_is_built_from_values_not_at_import(monkeypatch) -> None:
    """Importing the module reads no environment; `celery -A selectit.workers.app` builds `app`
    from it once, when it asks; `make_app` binds the database and engine options it is given."""
    import selectit.workers.app as module
    from selectit.scoring.engines import EngineOptions
    from selectit.settings import Settings

    env = {**os.environ, "SELECTIT_BATCH_SIZE": "not a number"}
    imported = subprocess.run([sys.executable, "-c", "import selectit.workers.app"], env=env, capture_output=True,
                              text=True, timeout=WAIT)
    assert imported.returncode == 0, imported.stderr  # a bad variable does not stop the import…
    asked = subprocess.run([sys.executable, "-c", "from selectit.workers.app import app"], env=env,
                           capture_output=True, text=True, timeout=WAIT)
    assert asked.returncode == 1 and "SELECTIT_BATCH_SIZE" in asked.stderr  # …the app built from it names it
    monkeypatch.setenv("SELECTIT_BATCH_SIZE", "3")
    monkeypatch.setenv("SELECTIT_BROKER_URL", "memory://")
    module.app_from_env.cache_clear()
    assert module.app is module.app and module.fleet_of(module.app).settings.batch_size == 3
    module.app_from_env.cache_clear()
    options = EngineOptions.of(concurrency=5)
    fleet = module.fleet_of(module.make_app(Settings(), db_url="sqlite:///elsewhere.db", engine_options=options))
    assert (fleet.db_url, fleet.engine_options, fleet.settings) == ("sqlite:///elsewhere.db", options, Settings())
