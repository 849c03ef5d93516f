"""`selectit status` and `Store.status`: counts, rates over the last minute and ten minutes, the
ETA per model, the `--dataset` filter, and stalled jobs — on SQLite and PostgreSQL.

Score and job rows are inserted directly with times relative to a fixed NOW, and the status is
read at NOW (its clock is set), so which cells fall in which window is decided by the fixture.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import socket
import subprocess
import sys

import pytest
import sqlalchemy as sa

import selectit
from selectit.errors import NoSuchDataset
from selectit import status as fusion_status
from selectit.jobs import counts
from selectit.io.ingest import content_hash
from selectit.jobs.estimate import duration
from selectit.store.db import session_scope
from selectit.store.schema import LLM, Dataset, DatasetSample, Job, JobPrompt, JobSample, Prompt, Sample, Score

NOW = dt.datetime(2026, 12, 1, 12, 0, 0)
SECONDS = dt.timedelta(seconds=1)

# sample → (prompt 0, prompt 1): "ok@S" = ok, scored S seconds before NOW; "failed"; None = missing.
CELLS = {
    "a": {"a1": ("ok@30", "ok@30"), "a2": ("ok@300", "failed"), "a3": (None, None)},
    "b": {"b1": ("ok@1200", "ok@1200"), "b2": ("ok@30", None)},
}
# By hand, per scope: (done, missing, failed, ok cells in the last minute, in the last ten minutes,
# the seconds of the ten minutes they cover: since the first of them, at least 60)
#   all: done 6 (a1 2, a2 1, b1 2, b2 1), missing 3 (a3 2, b2 1), failed 1; last minute a1 2 + b2 1 = 3;
#        ten minutes 3 + a2 1 = 4 (b1, 20 minutes ago, is in neither), since a2's 300 s ago
#   a:   done 3, missing 2, failed 1; last minute 2; ten minutes 3, since 300 s ago
#   b:   done 3, missing 1, failed 0; last minute 1; ten minutes 1, 30 s ago: counted as 60 s
EXPECTED = {None: (6, 3, 1, 3, 4, 300), "a": (3, 2, 1, 2, 3, 300), "b": (3, 1, 0, 1, 1, 60)}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid is free now: a holder that died
    return proc.pid


@pytest.fixture
def seeded(engine, monkeypatch) -> dict[str, int]:
    """The datasets of CELLS, model `m`, prompt set `s` (2 prompts), and five jobs:
    on dataset a: running with an expired lease, running held by a dead process of this host,
    running held by this live process; on dataset b: queued, and failed."""
    monkeypatch.setattr(fusion_status, "utcnow", lambda: NOW)
    ids: dict[str, int] = {}
    host = socket.gethostname()
    with session_scope(engine) as s:
        s.execute(sa.delete(Prompt).where(Prompt.set_name == "default"))
        model = LLM(name="m", source="test", fingerprint="m" * 8, dtype="float32", n_params=100,
                    label_ids={"shared-context": [1, 2, 3]}, max_tokens=512)
        prompts = [Prompt(set_name="s", position=i, layout="shared-context", template=f"Rate {i}: ",
                          text_hash=f"{i:064x}", scale=3) for i in range(2)]
        s.add_all([model, *prompts])
        s.flush()
        for name, samples in CELLS.items():
            ds = Dataset(name=name, source="test")
            s.add(ds)
            s.flush()
            for position, (sample_name, cells) in enumerate(samples.items()):
                sample = Sample(content_hash=content_hash(sample_name, "", "out"), instruction=sample_name, input="",
                                output="out", n_chars=10)
                s.add(sample)
                s.flush()
                ids[sample_name] = sample.id
                s.add(DatasetSample(dataset_id=ds.id, sample_id=sample.id, position=position))
                for prompt, cell in zip(prompts, cells):
                    key = dict(sample_id=sample.id, model_id=model.id, prompt_id=prompt.id)
                    if cell == "failed":
                        s.add(Score(**key, status="failed", error="boom", scored_at=NOW - 60 * SECONDS))
                    elif cell:
                        ago = int(cell.split("@")[1])
                        s.add(Score(**key, p1=0.25, p2=0.5, p3=0.25, mass=1.0, status="ok", engine="torch",
                                    scored_at=NOW - ago * SECONDS))
        jobs = {
            "expired": ("running", "elsewhere:1", NOW - 60 * SECONDS, ["a3"]),
            "dead": ("running", f"{host}:{_dead_pid()}", NOW + 3600 * SECONDS, ["a3"]),
            "live": ("running", f"{host}:{os.getpid()}", NOW + 3600 * SECONDS, ["a2"]),
            "queued": ("queued", None, None, ["b2"]),
            "failed": ("failed", None, None, ["b2"]),
        }
        for name, (state, worker, lease, samples) in jobs.items():
            job = Job(model_id=model.id, sample_ids=[ids[x] for x in samples], prompt_ids=[p.id for p in prompts],
                      n_cells=2 * len(samples), status=state, worker=worker, lease_expires_at=lease)
            s.add(job)
            s.flush()
            s.add_all(JobPrompt(job_id=job.id, prompt_id=p.id) for p in prompts)
            if state != "failed":  # an ended job's samples are only in its sample_ids
                s.add_all(JobSample(job_id=job.id, sample_id=ids[x]) for x in samples)
    return ids


@pytest.mark.parametrize("dataset", [None, "a", "b"])
def test_counts_rates_and_eta_of_the_store_or_one_dataset(engine, db_url, seeded, dataset) -> None:
    done, missing, failed, last_minute, ten_minutes, span = EXPECTED[dataset]
    status = selectit.open(db_url).status(dataset)
    (row,) = status.scoring
    assert (row.model, row.prompt_set, row.done, row.missing, row.failed) == ("m", "s", done, missing, failed)
    assert row.cells_per_min_1m == last_minute  # cells in 60 s, per minute
    assert row.cells_per_min == round(ten_minutes * 60 / span, 1)  # over the part scoring covered
    assert row.by_engine == (("torch", done),)
    (model,) = status.models
    assert (model.model, model.done, model.missing, model.failed) == ("m", done, missing, failed)
    assert model.eta_seconds == missing * span / ten_minutes  # missing ÷ (cells per second over that part)
    assert model.eta == duration(missing * span / ten_minutes)
    assert model.time_left == "–"  # no finished job recorded a rate
    names = {"a": 3, "b": 2}
    assert status.samples_per_dataset == [(n, k) for n, k in names.items() if dataset in (None, n)]


@pytest.mark.parametrize("dataset", [None, "a", "b"])
def test_a_job_whose_holder_is_gone_is_stalled_not_running(engine, db_url, seeded, dataset) -> None:
    (row,) = selectit.open(db_url).status(dataset).scoring
    # expired lease and dead local pid → stalled; the live holder → running (all three on dataset a)
    expected = {None: (1, 1, 2, 1), "a": (0, 1, 2, 0), "b": (1, 0, 0, 1)}[dataset]
    assert (row.queued, row.running, row.stalled, row.failed_jobs) == expected


def _row(output: str, first: str) -> list[str]:
    """The cells of the table row that starts with `first`."""
    for line in output.splitlines():
        cells = [c.strip() for c in re.split(r"[│|]", line)[1:-1]]
        if cells and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{output}")


def test_the_cli_shows_stalled_jobs_both_rates_and_the_eta(cli, seeded) -> None:
    out = cli("status", "--dataset", "a")
    assert out.exit_code == 0, out.output
    assert "stalled" in out.output and "expired" not in out.output
    # model, set, done, missing, failed, queued, running, stalled, failed jobs, 1 min, 10 min, engines
    assert _row(out.output, "m")[:11] == ["m", "s", "3", "2", "1", "0", "1", "2", "0", "2.0", "0.6"]
    per_model = out.output.split("per model (all prompt sets, dataset a)", 1)[1]
    # model, done, missing, failed, 1 min, 10 min, ETA (2 missing at 3 cells per 300 s), time left
    assert _row(per_model, "m") == ["m", "3", "2", "1", "2.0", "0.6", duration(2 * 300 / 3), "–"]
    assert "distinct samples stored" not in out.output  # a store-wide figure: left out for one dataset
    everything = cli("status")
    assert _row(everything.output, "m")[:11] == ["m", "s", "6", "3", "1", "1", "1", "2", "1", "3.0", "0.8"]
    assert "distinct samples stored: 5" in everything.output


def test_an_unknown_dataset_is_one_error_line(cli, db_url, seeded) -> None:
    out = cli("status", "--dataset", "nope")
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [
        "Error: no dataset named 'nope' (datasets: a, b); ingest one with `selectit ingest FILE --dataset nope`"]
    with pytest.raises(NoSuchDataset):
        selectit.open(db_url).status("nope")


def test_the_recent_cells_are_read_from_an_index_range(engine, seeded) -> None:
    """The rates read the `(status, scored_at)` index from the window's start, not every score."""
    query = counts.recent_cells(NOW - 600 * SECONDS, NOW - 60 * SECONDS, dataset_id=None)
    sql = str(query.compile(engine, compile_kwargs={"literal_binds": True}))
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = " ".join(r[3] for r in conn.execute(sa.text(f"EXPLAIN QUERY PLAN {sql}")))
            assert "USING INDEX ix_scores_status_scored_at (status=? AND scored_at>?)" in plan, plan
        else:  # a few rows: the planner would rather scan them, unless told to use an index where it can
            conn.execute(sa.text("SET LOCAL enable_seqscan = off"))
            plan = " ".join(r[0] for r in conn.execute(sa.text(f"EXPLAIN {sql}")))
            assert "ix_scores_status_scored_at" in plan and "scored_at >=" in plan, plan


def test_a_models_eta_adds_up_its_prompt_sets() -> None:
    def row(model_id: int, prompt_set: str, missing: int, recent: int, recent_1m: int) -> fusion_status.StatusRow:
        return fusion_status.StatusRow(f"m{model_id}", model_id, prompt_set, 5, missing, 0, 0, 0, 0, 0,
                                       recent / 10, (), recent_1m, recent, recent_1m)

    one, idle, finished = fusion_status.model_progress([
        row(1, "s", 2, 3, 2), row(1, "t", 4, 1, 0),  # 6 missing, 4 cells in ten minutes, 2 in the last one
        row(2, "s", 3, 0, 0),  # nothing scored lately: no ETA
        row(3, "s", 0, 0, 0),  # nothing missing: done
    ])
    assert (one.done, one.missing, one.cells_per_min_1m, one.cells_per_min) == (10, 6, 2.0, 0.4)
    assert one.eta_seconds == 6 * 600 / 4
    assert idle.eta_seconds is None and finished.eta_seconds == 0.0


def test_a_models_eta_is_per_token_once_tokens_are_known() -> None:
    """A model whose missing cells are long conversations: 6 cells of 9,000 tokens left after 4 cells
    of 1,000 tokens in ten minutes take 9,000 / 1,000 × ten minutes, not 6 / 4 of them."""
    def row(missing: int, recent: int, recent_tokens: int, missing_tokens: int) -> fusion_status.StatusRow:
        return fusion_status.StatusRow("m", 1, "s", 5, missing, 0, 0, 0, 0, 0, recent / 10, (), 0, recent, 0,
                                       recent_tokens=recent_tokens, missing_tokens=missing_tokens)

    (long,) = fusion_status.model_progress([row(6, 4, 1000, 9000)])
    assert long.eta_seconds == 9000 * 600 / 1000 and long.missing_tokens == 9000
    (unknown,) = fusion_status.model_progress([row(6, 4, 0, 9000)])  # no tokens recorded: per cell
    assert unknown.eta_seconds == 6 * 600 / 4
