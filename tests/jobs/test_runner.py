"""The job runner: planner, leases, claiming and in-process scoring (`selectit score`).

Every test runs on a real SQLite file and on PostgreSQL; the scoring ones on the tiny random
Llama of tests/tiny_model.py through selectit's real scorer (wrapped by tests/scorer_hooks.py,
which logs each computed cell so "computed once" can be checked, not just "stored once").
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from selectit.errors import NoSuchDataset, NoSuchModel
from selectit import status
from selectit.io.ingest import ingest_file
from selectit.jobs import leases, planner, runner
from selectit.scoring import registry
from selectit.settings import Settings
from selectit.store import db
from selectit.store.schema import Job, JobSample, Prompt, Score

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
DEMO = json.loads((ROOT / "selectit" / "data" / "alpaca_en_demo.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def seed(engine: sa.Engine, tmp_path: Path, name: str, records: list[dict]) -> None:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(records), encoding="utf-8")
    ingest_file(engine, path, name)


def add_model(engine: sa.Engine, name: str, source: Path) -> int:
    with db.session_scope(engine) as session:
        registry.ensure_default_prompts(session)  # what `selectit init` does
        return registry.add_model(session, name, str(source), dtype="float32").id


@pytest.fixture
def hooks(tmp_path, monkeypatch) -> Path:
    """Score through tests/scorer_hooks.py; returns its log of computed cells."""
    log = tmp_path / "cells.log"
    monkeypatch.setenv("SELECTIT_SCORER", "scorer_hooks:load")
    monkeypatch.setenv("SELECTIT_TEST_LOG", str(log))
    return log


def computed(log: Path) -> collections.Counter:
    """(sample, model, prompt) → how many times it was computed, from the hook's log."""
    if not log.exists():
        return collections.Counter()
    return collections.Counter(tuple(map(int, line.split()[1:])) for line in log.read_text().splitlines())


def cells_of_jobs(engine: sa.Engine) -> list[tuple[int, int, int]]:
    with db.session_scope(engine) as session:
        return [(s, j.model_id, p) for j in session.scalars(sa.select(Job)) for s in j.sample_ids for p in j.prompt_ids]


def score_rows(engine: sa.Engine) -> dict[tuple[int, int, int], tuple[str, int, str | None]]:
    with db.session_scope(engine) as session:
        return {(r.sample_id, r.model_id, r.prompt_id): (r.status, r.attempts, r.worker)
                for r in session.scalars(sa.select(Score))}


# ------------------------------------------------------------------------------------------ planner


def test_plan_puts_every_missing_cell_in_exactly_one_job(engine, tmp_path, tiny_dir) -> None:
    seed(engine, tmp_path, "d", DEMO[:12])
    m1, m2 = add_model(engine, "tiny", tiny_dir), add_model(engine, "tiny2", tiny_dir)
    ids = planner.plan(engine, max_tokens_per_job=2_000)
    cells = cells_of_jobs(engine)
    assert len(cells) == len(set(cells)) == 12 * 5 * 2
    assert {m for _, m, _ in cells} == {m1, m2}
    assert len(ids) > 2  # token-balanced: several chunks per model
    assert planner.plan(engine) == []  # planning twice enqueues nothing twice
    with db.session_scope(engine) as session:  # the membership rows the anti-join uses
        assert session.scalar(sa.select(sa.func.count()).select_from(JobSample)) == 12 * 2


def test_jobs_are_token_balanced_chunks_of_one_model(engine, tmp_path, tiny_dir) -> None:
    records = DEMO[:10]
    seed(engine, tmp_path, "d", records)
    add_model(engine, "tiny", tiny_dir)
    with db.session_scope(engine) as session:
        templates = [p.template for p in registry.ensure_default_prompts(session)]
        n_chars = dict(session.execute(sa.text("SELECT id, n_chars FROM samples")).all())
    # the planner's estimate: Σ over the set's prompts of (sample chars + template chars) // 4
    per_sample = {s: sum((n + len(t)) // 4 for t in templates) for s, n in n_chars.items()}
    limit = 3 * max(per_sample.values())
    planner.plan(engine, max_tokens_per_job=limit)
    with db.session_scope(engine) as session:
        planned = session.scalars(sa.select(Job).order_by(Job.id)).all()
        assert sorted(s for j in planned for s in j.sample_ids) == sorted(n_chars)
        for j in planned:
            assert j.est_tokens == sum(per_sample[s] for s in j.sample_ids)
            assert j.est_tokens <= limit and j.n_cells == len(j.sample_ids) * 5
            assert j.status == "queued" and j.attempts == 0
        assert len(planned) >= len(n_chars) * min(per_sample.values()) // limit


def test_plan_errors_say_what_to_do(engine, tmp_path, tiny_dir) -> None:
    with pytest.raises(NoSuchModel, match=r"^no model is registered\. Run `selectit model add NAME"):
        planner.plan(engine)
    add_model(engine, "tiny", tiny_dir)
    with pytest.raises(NoSuchDataset, match=r"^no dataset named 'nope' \(datasets: none\); "
                                          r"ingest one with `selectit ingest FILE --dataset nope`$"):
        planner.plan(engine, dataset="nope")
    with pytest.raises(NoSuchModel, match=r"^no active model named 'gpt' \(models: tiny\)\."):
        planner.plan(engine, model="gpt")
    with pytest.raises(planner.JobError, match=r"^no active prompt set named 'x' \(prompt sets: default\)\."):
        planner.plan(engine, prompt_set="x")
    assert planner.plan(engine, strict=False) == []  # no samples yet: nothing to do


# ------------------------------------------------------------------------------------------ leases


@pytest.fixture
def one_job(engine, tmp_path, tiny_dir) -> int:
    seed(engine, tmp_path, "d", DEMO[:3])
    add_model(engine, "tiny", tiny_dir)
    (job_id,) = planner.plan(engine)
    return job_id


def job_row(engine: sa.Engine, job_id: int) -> Job:
    with db.session_scope(engine) as session:
        return session.get(Job, job_id)


def test_a_job_is_claimed_by_one_worker_only(engine, one_job) -> None:
    assert leases.claim(engine, one_job, "a:1")
    assert not leases.claim(engine, one_job, "b:2")
    job = job_row(engine, one_job)
    assert (job.status, job.worker, job.attempts) == ("running", "a:1", 1)
    assert job.lease_expires_at > job.started_at


def test_postgres_claim_skips_a_locked_job_instead_of_waiting(engine, one_job) -> None:
    if not db.is_postgres(engine):
        pytest.skip("SKIP LOCKED is PostgreSQL's; SQLite serialises writers with BEGIN IMMEDIATE")
    with engine.connect() as holder:
        holder.execute(sa.text("SELECT id FROM jobs WHERE id = :i FOR UPDATE"), {"i": one_job})
        assert not leases.claim(engine, one_job, "b:2")  # returns at once: the row is locked
        holder.rollback()
    assert leases.claim(engine, one_job, "b:2")


def test_expired_lease_goes_back_to_the_queue_then_fails_after_n_attempts(engine, one_job, monkeypatch) -> None:
    two_attempts = Settings(max_job_attempts=2)
    assert leases.claim(engine, one_job, "elsewhere:1", lease=0)
    assert leases.requeue_expired(engine, two_attempts) == [one_job]
    job = job_row(engine, one_job)
    assert (job.status, job.attempts, job.worker) == ("queued", 1, None)
    assert job.error == "lease of elsewhere:1 expired"
    assert leases.claim(engine, one_job, "elsewhere:2", lease=0)
    assert leases.requeue_expired(engine, two_attempts) == []
    job = job_row(engine, one_job)
    assert job.status == "failed"
    assert job.error == "lease of elsewhere:2 expired (gave up after 2 attempts)"
    rows = score_rows(engine)  # its cells are failed cells now, retried by later plans
    assert len(rows) == 15 and {v[:2] for v in rows.values()} == {("failed", 1)}
    (row,) = [r for r in status.status_rows(engine)]
    assert (row.failed, row.missing, row.failed_jobs, row.queued) == (15, 0, 1, 0)
    assert len(planner.plan(engine)) == 1


def test_a_dead_local_holder_is_taken_over_without_waiting_for_its_lease(engine, one_job) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid is now free: a holder that died
    assert leases.claim(engine, one_job, f"{socket.gethostname()}:{proc.pid}", lease=3600)
    assert leases.claim(engine, one_job, "x:1") is False
    assert leases.requeue_expired(engine) == [one_job]
    assert job_row(engine, one_job).error == f"worker {socket.gethostname()}:{proc.pid} died"


def test_a_live_holder_keeps_its_job(engine, one_job) -> None:
    assert leases.claim(engine, one_job, leases.worker_id(), lease=3600)
    assert leases.requeue_expired(engine) == []


# ------------------------------------------------------------------------------------------ scoring


def test_second_score_does_no_forward_and_new_prompts_or_models_score_only_new_cells(
        engine, tmp_path, tiny_dir, hooks, cli) -> None:
    seed(engine, tmp_path, "d", DEMO[:6])
    m1 = add_model(engine, "tiny", tiny_dir)
    first = cli("score", "-q")
    assert first.exit_code == 0, first.output
    assert "scored 30 cells, failed 0, skipped 0 already scored." in first.output
    assert sum(computed(hooks).values()) == 30

    again = runner.score_in_process(engine, settings=Settings.from_env())
    assert (again.scored, again.skipped, again.forwards, again.jobs) == (0, 30, 0, 0)

    prompts = tmp_path / "p.txt"
    prompts.write_text("Rate this answer from 1 to 5.\\n{instruction}\\n{output}\\nRating: \n", encoding="utf-8")
    with db.session_scope(engine) as session:
        (new_prompt,) = [p.id for p in registry.import_prompts(session, prompts, "mine", "shared-context")]
    out = runner.score_in_process(engine, settings=Settings.from_env())
    assert (out.scored, out.skipped) == (6, 30)
    log = computed(hooks)
    assert sum(log.values()) == 36 and {p for (_, _, p), n in log.items()} >= {new_prompt}

    m2 = add_model(engine, "tiny2", tiny_dir)
    out = runner.score_in_process(engine, settings=Settings.from_env(), model="tiny2")
    assert (out.scored, out.skipped) == (36, 0)
    log = computed(hooks)
    assert sum(log.values()) == 72 and max(log.values()) == 1  # no cell computed twice
    rows = score_rows(engine)
    assert len(rows) == 72 and {m for _, m, _ in rows} == {m1, m2}
    assert all(v[0] == "ok" and v[1] == 1 for v in rows.values())


def test_a_failing_cell_is_retried_up_to_the_limit_and_the_rest_complete(
        engine, tmp_path, tiny_dir, hooks, monkeypatch) -> None:
    records = [dict(r) for r in DEMO[:5]]
    records[2]["instruction"] = "POISON " + records[2]["instruction"]
    seed(engine, tmp_path, "d", records)
    add_model(engine, "tiny", tiny_dir)
    monkeypatch.setenv("SELECTIT_TEST_POISON", "POISON")
    for attempt in (1, 2, 3):
        out = runner.score_in_process(engine, settings=Settings.from_env())
        assert (out.scored, out.failed) == ((20 if attempt == 1 else 0), 5)
        failed = {k: v for k, v in score_rows(engine).items() if v[0] == "failed"}
        assert len(failed) == 5 and {v[1] for v in failed.values()} == {attempt}
    out = runner.score_in_process(engine, settings=Settings.from_env())  # at the limit: left failed, not retried (and not "already scored")
    assert (out.scored, out.failed, out.skipped, out.exhausted) == (0, 0, 20, 5)
    with db.session_scope(engine) as session:
        errors = set(session.scalars(sa.select(Score.error).where(Score.status == "failed")))
    assert errors == {"RuntimeError: injected failure"}
    (row,) = status.status_rows(engine)
    assert (row.done, row.failed, row.missing) == (20, 5, 0)


def _selectit(db_url: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "selectit", "--db", db_url, *args],
                            env={**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{ROOT}", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_killed_score_run_is_taken_over_and_every_cell_is_scored_once(
        sqlite_url, tmp_path, tiny_dir, hooks) -> None:
    # SQLite, the embedded default (the fleet tests kill a worker on PostgreSQL).
    db_url, engine = sqlite_url, db.open_store(sqlite_url)
    seed(engine, tmp_path, "d", DEMO[:10])
    add_model(engine, "tiny", tiny_dir)
    env = {"SELECTIT_SCORER": "scorer_hooks:load", "SELECTIT_TEST_LOG": str(hooks)}
    victim = _selectit(db_url, "score", "-q", "--batch-size", "2", env={**env, "SELECTIT_TEST_DELAY": "0.5"})
    deadline = time.monotonic() + 120
    while len(score_rows(engine)) < 10:  # two batches committed
        assert victim.poll() is None, f"`selectit score` ended before it was killed:\n{victim.stdout.read()}"
        assert time.monotonic() < deadline, "`selectit score` wrote nothing in 120 s"
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    written = score_rows(engine)
    assert 10 <= len(written) < 50
    (held,) = [j for j in cells_and_status(engine) if j == "running"]  # left running by the dead run

    rerun = _selectit(db_url, "score", "--batch-size", "2", env=env)
    output, _ = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, output
    assert f"skipped {len(written)} already scored" in output
    rows = score_rows(engine)
    assert len(rows) == 50 and {v[:2] for v in rows.values()} == {("ok", 1)}
    victim_id = next(v[2] for v in written.values())
    log = computed(hooks)
    for cell, (_, _, worker) in rows.items():
        # what the killed run committed was never computed again; the rest was computed by the rerun
        assert log[cell] == 1 or (worker != victim_id and cell not in written), cell
    assert all(cell in log for cell in rows)


def cells_and_status(engine: sa.Engine) -> list[str]:
    with db.session_scope(engine) as session:
        return list(session.scalars(sa.select(Job.status)))


# ------------------------------------------------------------------------------------------ settings and scope


def test_a_bad_setting_names_its_variable(engine, tmp_path, tiny_dir, cli, monkeypatch) -> None:
    from selectit.settings import Settings, SettingsError

    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({"SELECTIT_LEASE_SECONDS": "2.5", "SELECTIT_MAX_ATTEMPTS": ""}).lease_seconds == 2.5
    with pytest.raises(SettingsError, match=r"^\$SELECTIT_BATCH_SIZE must be a whole number ≥ 1, not 'many'"):
        Settings.from_env({"SELECTIT_BATCH_SIZE": "many"})
    with pytest.raises(SettingsError, match=r"^\$SELECTIT_MAX_JOB_ATTEMPTS must be a whole number ≥ 1, not '0'"):
        Settings.from_env({"SELECTIT_MAX_JOB_ATTEMPTS": "0"})
    seed(engine, tmp_path, "d", DEMO[:2])
    add_model(engine, "tiny", tiny_dir)
    monkeypatch.setenv("SELECTIT_JOB_TOKENS", "lots")
    out = cli("score", "-q")
    assert out.exit_code == 1 and out.output.startswith("Error: $SELECTIT_JOB_TOKENS must be a whole number")
    monkeypatch.setenv("SELECTIT_JOB_TOKENS", "1000")
    monkeypatch.setenv("SELECTIT_SCORER", "no_such_module:load")
    out = cli("score", "-q")
    assert out.exit_code == 1 and out.output.startswith("Error: $SELECTIT_SCORER='no_such_module:load' cannot be "
                                                        "loaded (No module named 'no_such_module')")
    with db.session_scope(engine) as session:  # it failed before planning or claiming anything
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 0


def test_resolving_a_scope_writes_nothing_and_a_missing_default_set_says_run_init(engine, tmp_path, tiny_dir,
                                                                                  cli) -> None:
    seed(engine, tmp_path, "d", DEMO[:2])
    add_model(engine, "tiny", tiny_dir)
    with db.session_scope(engine) as session:
        session.execute(sa.delete(Prompt))  # a database from before the built-in set was a migration
    assert cli("prompts").exit_code == 0  # the listing creates nothing
    with db.session_scope(engine) as session:
        with pytest.raises(planner.JobError, match=r"Run `selectit init` to create it"):
            planner.resolve_scope(session)
        assert session.scalar(sa.select(sa.func.count()).select_from(Prompt)) == 0
    out = cli("score", "-q")
    assert out.exit_code == 1 and "Run `selectit init` to create it" in out.output


# ------------------------------------------------------------------------------------------ selectit plan


def test_plan_command_creates_jobs_once_without_the_broker(engine, tmp_path, tiny_dir, cli) -> None:
    seed(engine, tmp_path, "d", DEMO[:4])
    add_model(engine, "tiny", tiny_dir)
    first = cli("plan", "--no-enqueue", "--model", "tiny")
    assert first.exit_code == 0, first.output
    with db.session_scope(engine) as session:
        planned = session.scalars(sa.select(Job)).all()
        assert planned and {j.status for j in planned} == {"queued"}
    assert f"planned {len(planned)} new job(s), sent 0 to the broker." in first.output
    assert sorted(cells_of_jobs(engine)) == sorted(set(cells_of_jobs(engine))) and len(cells_of_jobs(engine)) == 20
    again = cli("plan", "--no-enqueue")
    assert again.exit_code == 0 and "planned 0 new job(s), sent 0 to the broker." in again.output
    assert len(cells_of_jobs(engine)) == 20


def test_plan_command_sends_each_job_to_its_model_queue(postgres_url, tmp_path, tiny_dir, redis_url) -> None:
    import redis

    engine = db.open_store(postgres_url)
    seed(engine, tmp_path, "d", DEMO[:4])
    add_model(engine, "tiny", tiny_dir)
    broker = redis.Redis.from_url(redis_url)
    broker.flushdb()
    env = {"SELECTIT_BROKER_URL": redis_url, "SELECTIT_JOB_TOKENS": "1000"}
    out, _ = _selectit(postgres_url, "plan", env=env).communicate(timeout=120)
    with db.session_scope(engine) as session:
        n_jobs = session.scalar(sa.select(sa.func.count()).select_from(Job))
    assert n_jobs > 1 and f"planned {n_jobs} new job(s), sent {n_jobs} to the broker." in out, out
    assert broker.llen("model.tiny") == n_jobs
    out, _ = _selectit(postgres_url, "plan", env=env).communicate(timeout=120)
    assert "planned 0 new job(s), sent 0 to the broker." in out, out
    assert broker.llen("model.tiny") == n_jobs
    broker.flushdb()


def test_two_planners_at_once_never_put_a_cell_in_two_jobs(postgres_url, tmp_path, tiny_dir) -> None:
    import threading

    engine = db.open_store(postgres_url)
    seed(engine, tmp_path, "d", DEMO[:40])
    add_model(engine, "tiny", tiny_dir), add_model(engine, "tiny2", tiny_dir)
    for round_ in range(3):  # several rounds: new samples each time, planners racing on them
        if round_:
            seed(engine, tmp_path, f"d{round_}", DEMO[40 * round_:40 * (round_ + 1)])
        start = threading.Barrier(4)
        planned: list[list[int]] = []

        def one_planner() -> None:
            start.wait()
            planned.append(planner.plan(engine, max_tokens_per_job=3_000))

        threads = [threading.Thread(target=one_planner) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(1 for ids in planned if ids) == 1  # one planner found the work, the others none
        cells = cells_of_jobs(engine)
        assert len(cells) == len(set(cells)) == 40 * (round_ + 1) * 5 * 2


def _cells_of(engine: sa.Engine, job_ids: list[int]) -> set[tuple[int, int, int]]:
    with db.session_scope(engine) as session:
        return {(s, j.model_id, p) for j in session.scalars(sa.select(Job).where(Job.id.in_(job_ids)))
                for s in j.sample_ids for p in j.prompt_ids}


def test_planning_again_finds_what_changed_since(engine, tmp_path, tiny_dir) -> None:
    """A plan with nothing new costs one small query, yet a new dataset or a failed cell is planned."""
    seed(engine, tmp_path, "d1", DEMO[:3])
    add_model(engine, "tiny", tiny_dir)
    assert planner.plan(engine) and planner.plan(engine) == []
    seed(engine, tmp_path, "d2", DEMO[3:5])
    with db.session_scope(engine) as session:
        new = set(session.scalars(sa.text("SELECT sample_id FROM dataset_samples ds JOIN datasets d "
                                          "ON d.id = ds.dataset_id WHERE d.name = 'd2'")))
    assert {s for s, _, _ in _cells_of(engine, planner.plan(engine))} == new
    # every job ends, its cells scored ok but one, failed below the attempt limit
    with db.session_scope(engine) as session:
        all_jobs = list(session.scalars(sa.select(Job.id)))
    cells = sorted(_cells_of(engine, all_jobs))
    with db.session_scope(engine) as session:
        session.execute(sa.text("UPDATE jobs SET status = 'done'"))
        session.execute(sa.text("DELETE FROM job_samples"))
        for i, (s, m, p) in enumerate(cells):
            session.execute(sa.text(
                "INSERT INTO scores (sample_id, model_id, prompt_id, status, attempts, truncated, scored_at) "
                "VALUES (:s, :m, :p, :st, 1, false, CURRENT_TIMESTAMP)"),
                {"s": s, "m": m, "p": p, "st": "failed" if i == 0 else "ok"})
    assert _cells_of(engine, planner.plan(engine)) == {cells[0]}
    assert planner.plan(engine) == []


def test_a_failed_cell_of_a_job_still_open_at_the_last_plan_is_retried_when_the_job_ends(
        engine, one_job) -> None:
    """The fleet's race: a batch's failed cell is committed a moment before its job is marked done;
    a plan in between sees nothing missing (the cell is in an open job). The plan after the job
    ends must still retry the cell, though no ingest or failure happened in between."""
    cell, *others = sorted(_cells_of(engine, [one_job]))
    with db.session_scope(engine) as session:  # the job's last batch: one cell failed, the rest ok
        for (s, m, p), st in [(cell, "failed"), *((c, "ok") for c in others)]:
            session.execute(sa.text(
                "INSERT INTO scores (sample_id, model_id, prompt_id, status, attempts, truncated, scored_at) "
                "VALUES (:s, :m, :p, :st, 1, false, CURRENT_TIMESTAMP)"), {"s": s, "m": m, "p": p, "st": st})
    assert planner.plan(engine) == []  # the failed cell is still in its open job
    with db.session_scope(engine) as session:
        session.execute(sa.text("UPDATE jobs SET status = 'done'"))
    assert _cells_of(engine, planner.plan(engine)) == {cell}


def test_progress_hears_of_cells_as_computed_before_their_batch_is_written(engine, tmp_path, tiny_dir,
                                                                          monkeypatch) -> None:
    """The score bar moves per request: `computed` reports come before the batch's `advance`."""
    seed(engine, tmp_path, "d", DEMO[:6])
    add_model(engine, "tiny", tiny_dir)
    monkeypatch.setenv("SELECTIT_SCORER", "scorer_hooks:per_request")
    events: list[tuple[str, int]] = []

    class Recorder:
        def start(self, total: int) -> None:
            events.append(("start", total))

        def computed(self, cells: int) -> None:
            events.append(("computed", cells))

        def advance(self, cells: int) -> None:
            events.append(("advance", cells))

        def note(self, text: str) -> None:
            pass

    summary = runner.score_in_process(engine, settings=Settings.from_env(), progress=Recorder(), batch_size=3)
    assert summary.scored == 6 * 5 and events[0] == ("start", 30)
    kinds = [k for k, _ in events[1:]]
    assert sum(n for k, n in events if k == "computed") == 30 and sum(n for k, n in events if k == "advance") == 30
    # per request (6) and per written batch (2, from the writer thread: in any order after them)
    assert kinds.count("computed") == 6 and kinds.count("advance") == 2
    assert kinds[:3] == ["computed"] * 3  # the first batch's cells are reported before anything is written


def test_progress_hears_the_tokens_of_the_cells_computed_as_the_estimate_counts_them(engine, tmp_path, tiny_dir,
                                                                                     monkeypatch) -> None:
    """The bar's time left is per token: `start` hears the scope's tokens and `computed` the tokens
    of each report's cells, in the planner's measure (`score --estimate`'s `planned_tokens`), so
    they add up to it — Alpaca samples and conversations of several turns (jobs of whole
    conversations) alike."""
    from selectit.jobs.estimate import estimate

    seed(engine, tmp_path, "d", DEMO[:4])
    turn = "Tell me more about it, at length please. " * 8  # a long turn beside short ones
    chats = [{"conversations": [{"from": "human", "value": f"Hi {i}"}, {"from": "gpt", "value": "Hello!"},
                                {"from": "human", "value": turn}, {"from": "gpt", "value": "Sure."}]} for i in range(2)]
    seed(engine, tmp_path, "c", chats)
    add_model(engine, "tiny", tiny_dir)
    monkeypatch.setenv("SELECTIT_SCORER", "scorer_hooks:per_request")
    [before] = estimate(engine, tokenizer=False)
    started: list[tuple[int, int | None]] = []
    heard: list[tuple[int, int | None]] = []

    class Recorder:
        def start(self, total: int, tokens: int | None = None) -> None:
            started.append((total, tokens))

        def computed(self, cells: int, tokens: int | None = None) -> None:
            heard.append((cells, tokens))

        def advance(self, cells: int) -> None:
            pass

        def note(self, text: str) -> None:
            pass

    summary = runner.score_in_process(engine, settings=Settings.from_env(), progress=Recorder(), batch_size=2)
    cells = (4 + 2 * 2) * 5  # 4 Alpaca samples and 2 conversations of 2 rated turns, 5 prompts each
    assert summary.scored == cells == before.cells
    assert started == [(cells, before.planned_tokens)] and before.planned_tokens > 0
    assert sum(n for n, _ in heard) == cells and sum(t for _, t in heard) == before.planned_tokens, heard
    assert all(t is not None and t > 0 for _, t in heard)  # every report carries its cells' tokens
