"""Streams of jobs (`selectit.jobs.pipeline`): the next job is claimed and read while the last
batches of the one before score, a stopping worker gives that job back uncharged, a killed worker's
claimed-ahead job is taken back and scored once, and a message whose job is taken wakes the worker
for another job of its model version.

Every test runs on a real SQLite file and on PostgreSQL, with a scorer that answers at once and
records what the database held while it scored (no model, no timing).
"""

from __future__ import annotations

import collections
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from test_runner import add_model, seed, tiny_dir  # noqa: F401 - tiny_dir is a fixture

from selectit.contract import CellResult, RatingRequest
from selectit.jobs import leases, planner
from selectit.jobs.pipeline import Outcome, StreamOptions, run_stream
from selectit.store import db
from selectit.store.schema import Job, Score

WAIT = 60.0  # seconds: the bound of a wait for the thread that claims ahead, far above a normal run


def jobs(engine: sa.Engine) -> dict[int, Job]:
    with db.read_scope(engine) as session:
        rows = session.scalars(sa.select(Job).order_by(Job.id)).all()
        session.expunge_all()
        return {j.id: j for j in rows}


class Recorder:
    """Answers every cell at once; for each batch it notes the job it belongs to, and calls
    `during(job_id, last)` first, so a test can look at the database while the batch scores."""

    engine = "recorder"
    engine_version = "test"
    forwards = 0

    def __init__(self, sample_job: dict[int, int], batches: dict[int, int],
                 during: Callable[[int, bool], None] = lambda job, last: None) -> None:
        self.sample_job, self.left = sample_job, dict(batches)
        self.during = during
        self.cells: collections.Counter[tuple[int, int]] = collections.Counter()

    def score(self, requests: Sequence[RatingRequest], progress: Any = None) -> list[CellResult]:
        job = self.sample_job[requests[0].sample_id]
        self.left[job] -= 1
        self.during(job, self.left[job] == 0)
        out = [CellResult(r.sample_id, p, (0.2,) * r.scale, 1.0, 10, False) for r in requests for p in r.prompt_ids]
        self.cells.update((c.sample_id, c.prompt_id) for c in out)
        return out

    def close(self) -> None:
        pass


@pytest.fixture
def three_jobs(engine, tmp_path, tiny_dir) -> tuple[list[int], dict[int, int], dict[int, int]]:
    """Three jobs of one model version, each of two samples of the same length (two batches of one
    sample): (ids, sample → job, job → batches)."""
    seed(engine, tmp_path, "d", [{"instruction": f"Question number {i}?", "input": "", "output": "An answer. " * 8}
                                 for i in range(6)])
    add_model(engine, "tiny", tiny_dir)
    with db.read_scope(engine) as session:
        per_sample = max(session.scalars(sa.text(
            "SELECT SUM((s.n_chars + LENGTH(p.template)) / 4) FROM samples s CROSS JOIN prompts p "
            "WHERE p.active GROUP BY s.id")))
    ids = planner.plan(engine, max_tokens_per_job=2 * per_sample)
    with db.read_scope(engine) as session:
        sample_job = {s: j.id for j in session.scalars(sa.select(Job)) for s in j.sample_ids}
    assert len(ids) == 3 and collections.Counter(sample_job.values()) == {i: 2 for i in ids}
    return ids, sample_job, {i: 2 for i in ids}


def _wait(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_the_next_job_is_claimed_while_the_last_batches_of_the_one_before_score(engine, three_jobs) -> None:
    ids, sample_job, batches = three_jobs
    seen: list[tuple[int, dict[int, tuple[str, str | None]]]] = []

    def during(job: int, last: bool) -> None:
        if last and job != ids[-1]:  # the next job must be taken while this batch is still scoring
            nxt = ids[ids.index(job) + 1]
            _wait(lambda: jobs(engine)[nxt].status == "running", f"job {nxt} to be claimed ahead")
            seen.append((job, {i: (j.status, j.worker) for i, j in jobs(engine).items()}))

    scorer = Recorder(sample_job, batches, during)
    outcomes = run_stream(engine, ids[0], lambda spec: scorer, "me:1",
                          StreamOptions(follow=True, batch_size=1))
    assert [(o.job_id, o.status, o.scored) for o in outcomes] == [(i, Outcome.DONE, 10) for i in ids]
    # while job n's last batch scored, job n was not done yet and job n+1 was this worker's
    assert [job for job, _ in seen] == ids[:2]
    for job, states in seen:
        nxt = ids[ids.index(job) + 1]
        assert states[job] == ("running", "me:1") and states[nxt] == ("running", "me:1")
    after = jobs(engine)
    assert all((j.status, j.attempts) == ("done", 1) for j in after.values())
    for a, b in zip(ids, ids[1:]):  # job n+1 was claimed before job n's last write marked it done
        assert after[b].started_at <= after[a].finished_at
    assert len(scorer.cells) == 6 * 5 and max(scorer.cells.values()) == 1
    with db.read_scope(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Score)) == 6 * 5
        thr = session.execute(sa.text("SELECT job_id, cells FROM throughput ORDER BY job_id")).all()
    assert [tuple(r) for r in thr] == [(i, 10) for i in ids]  # each job's rate, in its last commit


def test_a_single_job_run_does_not_claim_ahead(engine, three_jobs) -> None:
    ids, sample_job, batches = three_jobs
    outcomes = run_stream(engine, ids[0], lambda spec: Recorder(sample_job, batches), "me:1",
                          StreamOptions(batch_size=1))
    assert [(o.job_id, o.status) for o in outcomes] == [(ids[0], Outcome.DONE)]
    assert [j.status for j in jobs(engine).values()] == ["done", "queued", "queued"]


def test_a_stopping_worker_gives_back_the_job_it_claimed_ahead_uncharged(engine, three_jobs) -> None:
    ids, sample_job, batches = three_jobs
    stop = threading.Event()

    def during(job: int, last: bool) -> None:
        if last:  # told to stop once the next job is claimed ahead
            _wait(lambda: jobs(engine)[ids[1]].status == "running", "the next job to be claimed ahead")
            stop.set()

    released: list[int] = []
    scorer = Recorder(sample_job, batches, during)
    outcomes = run_stream(engine, ids[0], lambda spec: scorer, "me:1",
                          StreamOptions(follow=True, batch_size=1, stopping=stop.is_set,
                                        on_outcome=lambda o: released.append(o.job_id)
                                        if o.status == Outcome.RELEASED else None))
    assert [(o.job_id, o.status) for o in outcomes] == [(ids[0], Outcome.DONE), (ids[1], Outcome.RELEASED)]
    assert released == [ids[1]]  # the caller hears of it (the fleet sends it to the broker again)
    after = jobs(engine)
    assert (after[ids[1]].status, after[ids[1]].attempts, after[ids[1]].worker) == ("queued", 0, None)
    assert {s for s, _ in scorer.cells} == {s for s, j in sample_job.items() if j == ids[0]}
    # nothing was starved: the next worker takes it at once, and every cell is scored once
    rest = Recorder(sample_job, batches)
    outcomes = run_stream(engine, ids[1], lambda spec: rest, "next:2", StreamOptions(follow=True, batch_size=1))
    assert [(o.job_id, o.status) for o in outcomes] == [(ids[1], Outcome.DONE), (ids[2], Outcome.DONE)]
    assert not set(rest.cells) & set(scorer.cells) and len(rest.cells) + len(scorer.cells) == 6 * 5


def test_a_job_claimed_ahead_by_a_killed_worker_is_taken_back_and_scored_once(engine, three_jobs) -> None:
    ids, sample_job, batches = three_jobs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is now free: a worker that died holding a job it had claimed ahead
    holder = f"{socket.gethostname()}:{dead.pid}"
    assert leases.claim_next(engine, jobs(engine)[ids[0]].model_id, holder, lease=3600) == ids[0]
    scorer = Recorder(sample_job, batches)
    outcomes = run_stream(engine, ids[1], lambda spec: scorer, "me:1", StreamOptions(follow=True, batch_size=1))
    assert [o.job_id for o in outcomes] == ids[1:]  # held by its (dead) holder: not claimed twice
    assert leases.requeue_expired(engine) == [ids[0]]
    assert (jobs(engine)[ids[0]].status, jobs(engine)[ids[0]].attempts) == ("queued", 1)
    outcomes = run_stream(engine, ids[0], lambda spec: scorer, "me:1", StreamOptions(follow=True, batch_size=1))
    assert [(o.job_id, o.status) for o in outcomes] == [(ids[0], Outcome.DONE)]
    assert len(scorer.cells) == 6 * 5 and max(scorer.cells.values()) == 1
    assert (jobs(engine)[ids[0]].status, jobs(engine)[ids[0]].attempts) == ("done", 2)


def test_a_message_whose_job_is_taken_wakes_the_worker_for_another_of_its_model(engine, three_jobs) -> None:
    ids, sample_job, batches = three_jobs
    assert leases.claim(engine, ids[0], "other:9", lease=3600)
    scorer = Recorder(sample_job, batches)
    taken = run_stream(engine, ids[0], lambda spec: scorer, "me:1", StreamOptions(batch_size=1))
    assert [(o.job_id, o.status) for o in taken] == [(ids[0], Outcome.SKIPPED)]  # `selectit score`: no wake-up
    woken = run_stream(engine, ids[0], lambda spec: scorer, "me:1",
                       StreamOptions(follow=True, wake=True, batch_size=1))
    assert [(o.job_id, o.status) for o in woken] == [(ids[1], Outcome.DONE), (ids[2], Outcome.DONE)]
    assert jobs(engine)[ids[0]].worker == "other:9"
    nothing_left = run_stream(engine, ids[1], lambda spec: scorer, "me:1",
                              StreamOptions(follow=True, wake=True, batch_size=1))
    assert [(o.job_id, o.status) for o in nothing_left] == [(ids[1], Outcome.SKIPPED)]


def test_each_batch_but_the_first_is_tokenized_beside_the_batch_before_it(engine, three_jobs) -> None:
    """The engine's `prepare` of a batch runs on its own thread while the batch before scores (the
    next job's first batch while the last batch of the one before does), and ends before its own
    batch scores: an accelerator never waits for the tokenizer between batches or jobs."""
    ids, sample_job, batches = three_jobs
    prepared: dict[int, str] = {}  # sample → the thread its request was prepared on
    scoring: list[int] = []  # the samples being scored, in order

    class Preparing(Recorder):
        def prepare(self, requests: Sequence[RatingRequest]) -> None:
            time.sleep(0.05)  # longer than a batch here: `score` must still find it done
            prepared.update({r.sample_id: threading.current_thread().name for r in requests})

        def score(self, requests: Sequence[RatingRequest], progress: Any = None) -> list[CellResult]:
            ahead = [r.sample_id in prepared for r in requests]
            scoring.append(requests[0].sample_id)
            assert all(ahead) or not scoring[:-1], f"batch {requests[0].sample_id} was not prepared before it scored"
            return super().score(requests, progress)

    scorer = Preparing(sample_job, batches)
    outcomes = run_stream(engine, ids[0], lambda spec: scorer, "me:1", StreamOptions(follow=True, batch_size=1))
    assert [o.status for o in outcomes] == [Outcome.DONE] * 3 and len(scoring) == 6
    assert set(prepared) == set(scoring[1:])  # every batch after the first, the next jobs' first ones too
    assert set(prepared.values()) == {"selectit-prepare"}
