"""The `openai` engine against a small OpenAI-compatible server on loopback.

The server (`FakeServer`, Python's http.server) answers `/v1/models` and `/v1/completions` the way
vLLM's OpenAI server does, with log-probabilities computed by a real forward of the tiny model
(tests/tiny_model.py) in float32; it can ignore `logprob_token_ids` (then the engine falls back
to echo), refuse vLLM's extra fields like a hosted API, and inject faults (429, 500, timeouts,
garbage JSON). Parity is checked against the torch engine on the same model. A real `vllm serve`
is tested in tests/scoring/test_vllm_engine.py.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
from parity import by_cell, cell_delta
from test_torch_engine import records, requests

from selectit.contract import RatingRequest
from selectit.scoring import registry
from selectit.scoring.openai_engine import (
    CHAT_DTYPE,
    ECHO,
    TEXT,
    TOKEN_IDS,
    TOKEN_PROMPT,
    TOKENIZATION_CHECK,
    Endpoint,
    EndpointClient,
    EndpointError,
    OpenAIScorer,
    endpoint_host,
    normalize_endpoint,
)
from selectit.store import db
from selectit.store.schema import LLM, Score

KEY = "sk-test-7f3a9c1e5b"  # the API key: it must never show up in a log, a row or an error


class FakeServer:
    """An OpenAI-compatible completions server on 127.0.0.1 backed by a transformers model.

    `token_ids`: honour `logprob_token_ids` (vLLM ≥ 0.32); else it is ignored, as older servers do.
    `strict`: refuse vLLM's extra fields with a 400 and key log-probabilities by token text.
    `text_only`: refuse token-id prompts (a 400); text prompts are split by `split(text)` (by default
    the model's tokenizer, special tokens added). `tokenize_route`: answer vLLM's `POST /tokenize`.
    `echo_ok`: honour `echo` (else a 400). `/v1/chat/completions` wraps the one user message in
    `CHAT_TEMPLATE` and answers the first token's `top_logprobs` by token text.
    `fault(body, n)`: the n-th completions or chat request's fault, one of "429", "500", "timeout",
    "garbage", "echo-key" (a 400 quoting the Authorization header), "drip" (a 200 whose body comes
    a byte every half second, for three minutes), `(status, JSON object)` to answer as is, or None.
    `models_fault(auth)`: the same for `GET /v1/models`. `max_model_len` as bytes is written into the
    listing's JSON as is (`b"1e400"`); `extra_models` are listed after the served one.
    """

    CHAT_TEMPLATE = "<|user|>\n{}\n<|assistant|>\n"

    def __init__(self, model_dir: Path, *, served: str = "tiny", token_ids: bool = True, strict: bool = False,
                 key: str | None = KEY, max_model_len: int = 1024, sleep: float = 2.0, text_only: bool = False,
                 tokenize_route: bool = True, echo_ok: bool = True) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.served, self.token_ids, self.strict, self.key = served, token_ids, strict, key
        self.max_model_len, self.sleep = max_model_len, sleep
        self.text_only, self.tokenize_route, self.echo_ok = text_only, tokenize_route, echo_ok
        self.split = lambda text: self.tokenizer(text)["input_ids"]
        self.paths: list[str] = []
        self.fault = lambda body, n: None
        self.models_fault = lambda auth: None
        self.extra_models: list[dict] = []
        self.count = 0
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                fault = server.models_fault(self.headers.get("Authorization"))
                if fault is not None:
                    return self._send(*fault)
                if server.key and self.headers.get("Authorization") != f"Bearer {server.key}":
                    return self._send(401, {"error": {"message": "invalid API key"}})
                if self.path != "/v1/models":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                raw = isinstance(server.max_model_len, bytes)
                payload = json.dumps({"object": "list", "data": [
                    {"id": server.served, "object": "model", "created": int(time.time() * 1000), "owned_by": "test",
                     "root": "/models/tiny", "max_model_len": "RAW" if raw else server.max_model_len},
                    *server.extra_models]}).encode()
                self._raw(200, payload.replace(b'"RAW"', server.max_model_len) if raw else payload)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                auth = self.headers.get("Authorization")
                if server.key and auth != f"Bearer {server.key}":
                    return self._send(401, {"error": {"message": "invalid API key"}})
                if self.path == "/tokenize":
                    server.paths.append(self.path)
                    if not server.tokenize_route:
                        return self._send(404, {"detail": "Not Found"})
                    tokens = server.split(body["prompt"])
                    return self._send(200, {"tokens": tokens, "count": len(tokens),
                                            "max_model_len": server.max_model_len})
                if self.path not in ("/v1/completions", "/v1/chat/completions"):
                    return self._send(404, {"detail": "Not Found"})
                with server.lock:
                    n, server.count = server.count, server.count + 1
                    server.bodies.append(body)
                    server.paths.append(self.path)
                fault = server.fault(body, n)
                if isinstance(fault, tuple):
                    return self._send(*fault)
                if fault == "drip":
                    return self._drip()
                if self.path == "/v1/chat/completions":
                    try:
                        return self._send(200, server.chat(body))
                    except ValueError as exc:
                        return self._send(400, {"error": {"message": str(exc)}})
                if fault == "timeout":
                    time.sleep(server.sleep)
                    return self._send(200, {"late": True})
                if fault in ("429", "500"):
                    return self._send(int(fault), {"error": {"message": f"injected {fault}"}},
                                      {"Retry-After": "0"} if fault == "429" else {})
                if fault == "garbage":
                    return self._raw(200, b'{"choices": [ not json')
                if fault == "echo-key":
                    return self._send(400, {"error": {"message": f"bad request from {auth}"}})
                if fault == "poison":
                    return self._send(500, {"error": {"message": "CUDA error: an illegal memory access"}})
                try:
                    self._send(200, server.complete(body))
                except ValueError as exc:
                    self._send(400, {"error": {"message": str(exc)}})

            def _drip(self) -> None:
                """A 200 whose body never ends in time: each read gets a byte, the whole takes 3 minutes."""
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    for _ in range(360):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.5)
                    self.wfile.write(b"{}")
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: what it should do
                    pass

            def _send(self, code: int, data: dict, headers: dict | None = None) -> None:
                self._raw(code, json.dumps(data).encode(), headers)

            def _raw(self, code: int, payload: bytes, headers: dict | None = None) -> None:
                try:
                    self.send_response(code)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout)
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _key(self, token: int) -> str:
        return self.tokenizer.decode([token]) if self.strict else f"token_id:{token}"

    @torch.inference_mode()
    def complete(self, body: dict) -> dict:
        extra = {"return_tokens_as_token_ids", "logprob_token_ids"} & set(body)
        if self.strict and extra:
            raise ValueError(f"Unrecognized request argument supplied: {sorted(extra)[0]}")
        if body.get("model") != self.served:
            raise ValueError(f"The model `{body.get('model')}` does not exist.")
        ids = body["prompt"]
        if isinstance(ids, str):
            ids = self.split(ids)
        elif self.text_only:
            raise ValueError("'prompt' must be a string")
        if not (isinstance(ids, list) and all(isinstance(t, int) for t in ids)):
            raise ValueError("'prompt' must be a string or a list of token ids")
        if len(ids) + int(body.get("max_tokens", 16)) > self.max_model_len:
            raise ValueError(f"This model's maximum context length is {self.max_model_len} tokens.")
        logp = self.model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
        usage = {"prompt_tokens": len(ids), "completion_tokens": int(body.get("max_tokens", 16)),
                 "total_tokens": len(ids) + int(body.get("max_tokens", 16))}
        if body.get("echo"):
            if not self.echo_ok:
                raise ValueError("echo is not supported")
            tokens = [self._key(t) for t in ids]
            values = [None] + [logp[i - 1, t].item() for i, t in enumerate(ids) if i > 0]
            return {"choices": [{"index": 0, "text": "", "logprobs": {"tokens": tokens, "token_logprobs": values,
                                                                     "top_logprobs": None}}], "usage": usage}
        last = logp[-1]
        top = {self._key(int(t)): last[t].item() for t in last.topk(int(body.get("logprobs") or 1)).indices}
        if self.token_ids and body.get("logprob_token_ids"):
            top = {self._key(t): last[t].item() for t in body["logprob_token_ids"]}
        chosen = int(last.argmax())
        return {"choices": [{"index": 0, "text": self.tokenizer.decode([chosen]), "logprobs": {
            "tokens": [self._key(chosen)], "token_logprobs": [last[chosen].item()], "top_logprobs": [top]}}],
            "usage": usage}

    @torch.inference_mode()
    def chat_logprobs(self, content: str) -> torch.Tensor:
        """The log-softmax of the first answer token to one user message (what `chat` reads)."""
        ids = self.split(self.CHAT_TEMPLATE.format(content))
        return self.model(torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)

    def chat(self, body: dict) -> dict:
        if body.get("model") != self.served:
            raise ValueError(f"The model `{body.get('model')}` does not exist.")
        if "prompt" in body or set(body) - {"model", "messages", "max_tokens", "temperature", "logprobs",
                                            "top_logprobs", "stream"}:
            raise ValueError(f"Unrecognized request arguments: {sorted(body)}")
        (msg,) = body["messages"]
        if msg["role"] != "user":
            raise ValueError("one user message expected")
        last = self.chat_logprobs(msg["content"])
        chosen = int(last.argmax())
        top = [{"token": self.tokenizer.decode([int(t)]), "logprob": last[t].item()}
               for t in last.topk(int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0).indices]
        entry = {"token": self.tokenizer.decode([chosen]), "logprob": last[chosen].item(), "top_logprobs": top}
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": entry["token"]},
                             "logprobs": {"content": [entry]} if body.get("logprobs") else None,
                             "finish_reason": "length"}]}


@pytest.fixture(autouse=True)
def clean_engine_env(monkeypatch):
    """No engine setting from outside, and whatever a command exports (`--engine openai`,
    `--logprobs-top`) is undone after the test."""
    from selectit.scoring.engines import ENV

    for name in ENV.values():
        monkeypatch.setenv(name, "")  # recorded, so the teardown restores the variable's absence
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def tiny_version(tmp_path_factory, tiny_model_dir):
    """The tiny model as a local model version (float32), and the torch engine's exact scorer."""
    from selectit.scoring.torch_engine import load_scorer

    engine = db.open_store(f"sqlite:///{tmp_path_factory.mktemp('openai') / 's.db'}")
    with db.session_scope(engine) as s:
        model = registry.add_model(s, "tiny", str(tiny_model_dir), dtype="float32")
        s.expunge(model)
    engine.dispose()
    return model, load_scorer(model, device="cpu", exact=True)


@pytest.fixture
def server(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TINY_KEY", KEY)
    srv = FakeServer(tiny_model_dir)
    yield srv
    srv.close()


def scorer_for(srv: FakeServer, tiny_version, *, top_k: int | None = None, chat: bool = False,
               **client_kwargs) -> OpenAIScorer:
    model, torch_scorer = tiny_version
    kwargs = {"concurrency": 8, "timeout": 30.0, "max_retries": 3, "backoff": 0.001, **client_kwargs}
    client = EndpointClient(Endpoint(normalize_endpoint(srv.url), srv.served, "TINY_KEY"), **kwargs)
    return OpenAIScorer(client, torch_scorer.tokenizer, model_id=model.id, max_tokens=model.max_tokens,
                        label_ids=dict(model.label_ids), top_k=top_k, chat=chat)


@pytest.fixture
def text_server(tiny_model_dir, monkeypatch):
    """A server that refuses token-id prompts: `text_server(**FakeServer options)`."""
    monkeypatch.setenv("TINY_KEY", KEY)
    made: list[FakeServer] = []

    def make(**kwargs) -> FakeServer:
        made.append(FakeServer(tiny_model_dir, text_only=True, **kwargs))
        return made[-1]

    yield make
    for srv in made:
        srv.close()


@pytest.mark.parametrize("layout", ["reference", "shared-context"])
def test_exact_mode_reads_logprob_token_ids_and_matches_the_torch_engine(server, tiny_version, layout):
    reqs = requests(records(3), layout)
    scorer = scorer_for(server, tiny_version)
    cells = scorer.score(reqs)
    assert scorer.method == TOKEN_IDS
    assert cell_delta(tiny_version[1].score(reqs), cells) <= 1e-4
    # two probes (the prompt form, then logprob_token_ids), then one request per cell, each asking for
    # exactly its labels, with the prompt as token ids
    assert server.count == 2 + len(cells)
    asked = [b for b in server.bodies[2:]]
    assert all(isinstance(b["prompt"], list) for b in server.bodies)
    assert all(b["max_tokens"] == 1 and len(b["logprob_token_ids"]) == 5 for b in asked)
    assert not any(c.partial for c in cells)


def test_exact_mode_falls_back_to_echo_with_k_requests_per_cell(server, tiny_version):
    server.token_ids = False  # a server that ignores logprob_token_ids
    reqs = requests(records(2), "shared-context")
    scorer = scorer_for(server, tiny_version)
    cells = scorer.score(reqs)
    assert scorer.method == ECHO
    assert cell_delta(tiny_version[1].score(reqs), cells) <= 1e-4
    # probe: the prompt form, one ignored logprob_token_ids request and one echo; then 5 labels × 10 cells
    assert server.count == 3 + 5 * len(cells)
    assert all(b["echo"] and b["max_tokens"] == 0 for b in server.bodies[3:])


@pytest.mark.parametrize("form", [TOKEN_PROMPT, TEXT])
def test_a_truncated_prompt_is_cut_as_the_other_engines_cut_it(server, text_server, tiny_version, form):
    rec = {"instruction": "Summarize.", "input": "", "output": "word " * 300 + "THE END."}
    reqs = requests([rec], "shared-context")
    scorer = scorer_for(server if form == TOKEN_PROMPT else text_server(), tiny_version)
    torch_scorer = tiny_version[1]
    old = torch_scorer.max_tokens
    torch_scorer.max_tokens = scorer.max_tokens = 200
    try:
        assert scorer._prepare(reqs[0]).ids == torch_scorer._prepare(reqs[0]).ids
        cells = scorer.score(reqs)
        assert scorer.prompt_form == form
        assert all(c.truncated and c.n_tokens <= 200 for c in cells)
        assert cell_delta(torch_scorer.score(reqs), cells) <= 1e-4
    finally:
        torch_scorer.max_tokens = old


def test_top_k_mode_counts_labels_outside_the_top_k_as_zero_and_flags_the_cell(server, tiny_version):
    reqs = requests(records(3), "shared-context")
    exact = by_cell(tiny_version[1].score(reqs))
    scorer = scorer_for(server, tiny_version, top_k=2)
    cells = scorer.score(reqs)
    assert all(b["logprobs"] == 2 and "logprob_token_ids" not in b for b in server.bodies[1:])  # after the form probe
    assert scorer.engine_version.endswith("top-2")
    n_partial = 0
    for c in cells:
        assert c.ok
        e = exact[(c.sample_id, c.prompt_id)]
        labels = scorer._labels(reqs[c.sample_id].prompts[c.prompt_id])[:5]
        # what the model ranks in its top 2 over the whole vocabulary (from the exact forward)
        logits = server.model(torch.tensor([scorer._prepare(reqs[c.sample_id]).ids[c.prompt_id]])).logits[0, -1]
        top2 = set(logits.topk(2).indices.tolist())
        for k, t in enumerate(labels):
            assert c.probs[k] == (pytest.approx(e.probs[k], abs=1e-4) if t in top2 else 0.0)
        assert c.partial == any(t not in top2 for t in labels)
        assert c.mass == pytest.approx(sum(c.probs))
        n_partial += c.partial
    assert n_partial == len(cells)  # 2 of 5 labels at most: every cell misses one


def test_a_strict_server_gets_no_extra_fields_and_is_read_by_token_text(tiny_model_dir, tiny_version, monkeypatch):
    monkeypatch.setenv("TINY_KEY", KEY)
    srv = FakeServer(tiny_model_dir, strict=True)
    try:
        reqs = requests(records(2), "shared-context")
        scorer = scorer_for(srv, tiny_version)
        cells = scorer.score(reqs)
        assert scorer.method == ECHO and not scorer.token_ids_as_keys
        assert cell_delta(tiny_version[1].score(reqs), cells) <= 1e-4
        top = scorer_for(srv, tiny_version, top_k=20)
        assert all(c.ok for c in top.score(reqs))
    finally:
        srv.close()


@pytest.mark.parametrize("tokenize_route", [True, False])
def test_a_text_only_server_gets_text_prompts_after_one_tokenization_check(text_server, tiny_version,
                                                                           tokenize_route):
    srv = text_server(tokenize_route=tokenize_route)
    reqs = requests(records(2), "shared-context")
    scorer = scorer_for(srv, tiny_version)
    cells = scorer.score(reqs)
    assert (scorer.prompt_form, scorer.method) == (TEXT, TOKEN_IDS)
    assert scorer.engine_version.endswith("exact (logprob_token_ids, text prompts)")
    assert cell_delta(tiny_version[1].score(reqs), cells) <= 1e-4
    # the cells' prompts went as their rendered text, one request each
    sent = [b["prompt"] for b in srv.bodies[-len(cells):]]
    assert sorted(sent) == sorted(p.text for r in reqs for p in r.prompts)
    # the probe: token ids refused, then text; the tokenization checked once, by /tokenize or by echo
    assert isinstance(srv.bodies[0]["prompt"], list) and isinstance(srv.bodies[1]["prompt"], str)
    assert srv.paths.count("/tokenize") == 1
    echoed = [b for b in srv.bodies if b.get("echo")]
    assert [b["prompt"] for b in echoed] == ([] if tokenize_route else [TOKENIZATION_CHECK])
    scorer.score(reqs)
    assert srv.paths.count("/tokenize") == 1 and len([b for b in srv.bodies if b.get("echo")]) == len(echoed)


def test_a_text_only_server_without_logprob_token_ids_is_read_by_echo(text_server, tiny_version):
    srv = text_server(token_ids=False, tokenize_route=False)
    reqs = requests(records(1), "shared-context")
    scorer = scorer_for(srv, tiny_version)
    cells = scorer.score(reqs)
    assert (scorer.prompt_form, scorer.method) == (TEXT, ECHO)
    assert cell_delta(tiny_version[1].score(reqs), cells) <= 1e-4
    labels = tiny_version[0].label_ids["shared-context"]
    digits = {tiny_version[1].tokenizer.decode([t]) for t in labels[:5]}
    assert {b["prompt"][-1] for b in srv.bodies[-5 * len(cells):]} == digits


@pytest.mark.parametrize("check", ["/tokenize", "echo", "usage"])
def test_a_server_that_tokenizes_otherwise_is_refused_naming_the_first_difference(text_server, tiny_version,
                                                                                    check):
    srv = text_server(tokenize_route=check == "/tokenize", echo_ok=check != "usage")
    tok = tiny_version[1].tokenizer
    srv.split = lambda text: tok(text.replace("🙂", "").replace("日本語", "Japanese"))["input_ids"]
    local, remote = tok(TOKENIZATION_CHECK)["input_ids"], srv.split(TOKENIZATION_CHECK)
    first = next(i for i, (a, b) in enumerate(zip(local, remote)) if a != b)
    assert len(local) != len(remote)
    with pytest.raises(EndpointError) as err:
        scorer_for(srv, tiny_version).score(requests(records(1), "shared-context"))
    msg = str(err.value)
    assert "--tokenizer" in msg
    if check == "usage":
        assert f"as {len(remote)} tokens where the local tokenizer has {len(local)}" in msg
    else:
        assert "tokenizes text differently from the local tokenizer (" in msg
        assert f"first difference at token {first} (server {tok.decode([remote[first]])!r}, " \
               f"local {tok.decode([local[first]])!r}; {len(remote)} vs {len(local)} tokens)" in msg


def test_a_text_prompt_the_server_reads_as_other_tokens_fails_only_its_cell(text_server, tiny_version):
    srv = text_server()
    tok = tiny_version[1].tokenizer
    srv.split = lambda text: tok(text.replace("zebra", "zebras"))["input_ids"]
    recs = records(2)
    recs[1] = {**recs[1], "output": recs[1]["output"] + " A zebra."}
    cells = by_cell(scorer_for(srv, tiny_version).score(requests(recs, "shared-context")))
    failed = sorted(k for k, c in cells.items() if not c.ok)
    assert failed == [(1, k) for k in range(5)]
    assert all("the server read the prompt text as" in cells[k].error for k in failed)


def test_the_chat_layout_sends_one_user_message_and_reads_the_digits_top_logprobs(server, tiny_version):
    tok = tiny_version[1].tokenizer
    reqs = requests(records(2), "shared-context")
    for k in (len(tok), 3):  # the whole vocabulary (then exact for this layout), and a top 3
        server.bodies.clear()
        scorer = scorer_for(server, tiny_version, chat=True, top_k=k)
        cells = scorer.score(reqs)
        assert scorer.engine_version.endswith(f"chat top-{k}")
        assert set(server.paths) == {"/v1/chat/completions"}
        assert all((b["max_tokens"], b["temperature"], b["logprobs"], b["top_logprobs"]) == (1, 0.0, True, k)
                   for b in server.bodies)
        sent = [b["messages"] for b in server.bodies]  # no probe unless loaded: every request is a cell
        assert sorted(m[0]["content"] for m in sent) == sorted(p.text for r in reqs for p in r.prompts)
        assert all(len(m) == 1 and m[0]["role"] == "user" for m in sent)
        n_partial = 0
        for c in cells:
            logp = server.chat_logprobs(reqs[c.sample_id].prompts[c.prompt_id].text)
            top = logp.topk(k).indices.tolist()
            texts = {t: tok.decode([t]).strip() for t in top}
            # p(digit) = the summed probability of the top tokens that read as that digit
            expected = [sum(logp[t].exp().item() for t in top if texts[t] == str(d)) for d in range(1, 6)]
            assert c.probs == pytest.approx(expected, rel=1e-5, abs=1e-9)  # float32 forwards
            assert c.partial == any(str(d) not in texts.values() for d in range(1, 6))
            n_partial += c.partial
        assert n_partial == (0 if k == len(tok) else len(cells))
        server.paths.clear()


def test_rate_limits_server_errors_timeouts_and_garbage_are_retried_and_nothing_is_lost(server, tiny_version,
                                                                                       caplog):
    caplog.set_level(logging.DEBUG)
    reqs = requests(records(4), "shared-context")
    expected = scorer_for(server, tiny_version).score(reqs)
    rng = random.Random(7)
    faults = Counter()

    def fault(body, n):
        f = rng.choice(["429", "500", "timeout", "garbage", None, None])
        faults[f] += 1
        return f

    server.fault = fault
    server.sleep = 1.0
    scorer = scorer_for(server, tiny_version, timeout=0.5, max_retries=30)
    cells = scorer.score(reqs)
    assert all(faults[f] > 0 for f in ("429", "500", "timeout", "garbage"))
    assert scorer.client.retries >= sum(faults[f] for f in ("429", "500", "timeout", "garbage")) - 1
    assert cell_delta(expected, cells) == 0.0  # every cell, with the same probabilities
    assert KEY not in caplog.text


def test_a_cell_that_keeps_failing_is_failed_with_the_servers_message_and_the_key_masked(server, tiny_version,
                                                                                       caplog):
    caplog.set_level(logging.DEBUG)
    reqs = requests(records(3), "shared-context")
    poisoned = scorer_for(server, tiny_version)._prepare(reqs[1]).ids[0]
    masked = scorer_for(server, tiny_version)._prepare(reqs[2]).ids[3]
    server.fault = lambda body, n: ("poison" if body["prompt"] == poisoned
                                    else "echo-key" if body["prompt"] == masked else None)
    scorer = scorer_for(server, tiny_version, max_retries=2)
    cells = by_cell(scorer.score(reqs))
    assert len(cells) == 15
    failed = {k: c.error for k, c in cells.items() if not c.ok}
    assert set(failed) == {(1, 0), (2, 3)}
    assert "HTTP 500: CUDA error: an illegal memory access (after 3 tries)" in failed[(1, 0)]
    assert "127.0.0.1" in failed[(1, 0)]
    assert "HTTP 400: bad request from Bearer ***" in failed[(2, 3)] and KEY not in failed[(2, 3)]
    # a 400 is not retried; the 500 was tried 3 times
    assert sum(1 for b in server.bodies if b["prompt"] == masked) == 1
    assert sum(1 for b in server.bodies if b["prompt"] == poisoned) == 3
    assert KEY not in caplog.text


def test_a_missing_key_or_a_wrong_key_fails_clearly(server, tiny_version, monkeypatch):
    monkeypatch.delenv("TINY_KEY")
    with pytest.raises(EndpointError, match=r"\$TINY_KEY is not set"):
        scorer_for(server, tiny_version).score(requests(records(1), "shared-context"))
    monkeypatch.setenv("TINY_KEY", "wrong")
    for top_k in (None, 5):
        with pytest.raises(EndpointError, match=r"refused the request \(HTTP 401: invalid API key\); check the API key "
                                                r"\(\$TINY_KEY\)"):
            scorer_for(server, tiny_version, top_k=top_k).score(requests(records(1), "shared-context"))


def test_endpoint_urls() -> None:
    assert normalize_endpoint("http://10.0.0.5:8000") == "http://10.0.0.5:8000/v1"
    assert normalize_endpoint("https://api.example.com/openai/v1/") == "https://api.example.com/openai/v1"
    assert endpoint_host("http://10.0.0.5:8000/v1") == "http://10.0.0.5:8000"
    with pytest.raises(EndpointError, match="holds credentials"):
        normalize_endpoint("https://user:sk-123@api.example.com/v1")
    with pytest.raises(EndpointError, match="not an http"):
        normalize_endpoint("10.0.0.5:8000")


# ------------------------------------------------------------------------------------------------
# Registration, `selectit score` and the fusion, through the CLI


def test_a_served_model_is_registered_scored_and_recorded_without_its_key(server, tiny_model_dir, tiny_version,
                                                                          cli, engine, tmp_path, capfd):
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records(2)), encoding="utf-8")
    assert cli("init").exit_code == 0
    assert cli("ingest", data, "--dataset", "d").exit_code == 0
    out = cli("model", "add", "srv", "--endpoint", server.url, "--served-model", "tiny",
              "--tokenizer", tiny_model_dir, "--api-key-env", "TINY_KEY")
    assert out.exit_code == 0, out.output
    assert f"tiny served at {server.url}/v1" in out.output and "no θ" in out.output
    again = cli("model", "add", "srv", "--endpoint", server.url + "/v1/", "--served-model", "tiny",
                "--tokenizer", tiny_model_dir, "--api-key-env", "TINY_KEY")
    assert "unchanged" in again.output  # `created` changes on every /v1/models call: not part of the version
    with db.session_scope(engine) as s:
        (m,) = s.scalars(sa.select(LLM)).all()
        assert (m.endpoint, m.served_model, m.api_key_env, m.dtype, m.n_params) == (
            f"{server.url}/v1", "tiny", "TINY_KEY", "server", None)
        assert m.max_tokens == 1023  # the server's context less the label position
        assert m.label_ids == tiny_version[0].label_ids
    out = cli("score", "-q", "--concurrency", "4")
    assert out.exit_code == 0, out.output
    assert "scored 10 cells, failed 0" in out.output
    with db.session_scope(engine) as s:
        rows = s.execute(sa.select(Score.engine, Score.engine_version, Score.partial, Score.p1, Score.p2, Score.p3,
                                   Score.p4, Score.p5, Score.sample_id, Score.prompt_id)).all()
    assert {(r.engine, r.engine_version, r.partial) for r in rows} == {
        ("openai", f"{server.url}, model tiny, exact ({TOKEN_IDS})", False)}
    assert "openai 10" in cli("status").output
    # a model alone ranks without θ; next to another model it needs one
    assert cli("rank", "--dataset", "d").exit_code == 0
    assert cli("model", "add", "local", "--source", tiny_model_dir, "--dtype", "float32").exit_code == 0
    out = cli("rank", "--dataset", "d")
    assert out.exit_code == 1 and "Error: model 'srv' has no weight θ" in out.output
    assert cli("rank", "--dataset", "d", "--weights", "srv=1,local=1").exit_code == 0
    assert cli("model", "add", "srv", "--endpoint", server.url, "--served-model", "tiny", "--tokenizer",
               tiny_model_dir, "--api-key-env", "TINY_KEY", "--params", "1000").exit_code == 0
    assert "no weight θ" not in cli("rank", "--dataset", "d").output
    # another deployment (another context) is another version
    server.max_model_len = 512
    out = cli("model", "add", "srv", "--endpoint", server.url, "--served-model", "tiny", "--tokenizer",
              tiny_model_dir, "--api-key-env", "TINY_KEY")
    assert "added" in out.output
    listing = cli("models").output
    assert "tiny at" in listing
    # the key is nowhere: not in the database, not in anything printed
    with db.session_scope(engine) as s:
        dump = json.dumps([[str(v) for v in row] for t in (LLM, Score)
                           for row in s.execute(sa.select(t)).all()])
    assert KEY not in dump
    assert KEY not in "".join(capfd.readouterr())


def test_served_model_registration_errors_say_what_is_wrong(server, tiny_model_dir, cli, monkeypatch):
    out = cli("model", "add", "srv", "--endpoint", server.url, "--served-model", "llama",
              "--tokenizer", tiny_model_dir, "--api-key-env", "TINY_KEY")
    assert out.exit_code == 1 and "does not serve a model 'llama' (it serves: 'tiny')" in out.output
    out = cli("model", "add", "srv", "--endpoint", server.url, "--served-model", "tiny", "--tokenizer", tiny_model_dir)
    assert out.exit_code == 1 and "HTTP 401" in out.output
    monkeypatch.delenv("TINY_KEY")
    out = cli("model", "add", "srv", "--endpoint", server.url, "--served-model", "tiny",
              "--tokenizer", tiny_model_dir, "--api-key-env", "TINY_KEY")
    assert out.exit_code == 1 and "$TINY_KEY is not set" in out.output
    out = cli("model", "add", "srv", "--source", tiny_model_dir, "--served-model", "tiny")
    assert out.exit_code == 1 and "--served-model go with --endpoint" in out.output
    out = cli("model", "add", "srv", "--endpoint", server.url)
    assert out.exit_code == 1 and "--endpoint needs --served-model" in out.output
    out = cli("model", "add", "srv")
    assert out.exit_code == 1 and "either --source" in out.output
    assert "srv" not in cli("models").output


def test_the_openai_engine_with_a_local_model_is_an_error(tiny_version):
    from selectit.scoring.engines import EngineOptions, load_engine

    with pytest.raises(EndpointError, match="is not served by an endpoint"):
        load_engine(tiny_version[0], EngineOptions(engine="openai"))


def test_a_failing_request_list_is_still_one_result_per_cell(server, tiny_version):
    reqs = requests(records(2), "shared-context")
    reqs.append(RatingRequest(9, (0,), (reqs[0].prompts[0],), 12))  # an impossible scale
    cells = scorer_for(server, tiny_version).score(reqs)
    assert len(cells) == 11
    assert [c.error for c in cells if not c.ok] == ["scale 12 is out of range 2..9"]


def test_top_k_cells_are_stored_partial_and_rank_says_how_many(server, tiny_model_dir, cli, engine, tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records(2)), encoding="utf-8")
    assert cli("init").exit_code == 0
    assert cli("ingest", data, "--dataset", "d").exit_code == 0
    assert cli("model", "add", "srv", "--endpoint", server.url, "--served-model", "tiny", "--tokenizer",
               tiny_model_dir, "--api-key-env", "TINY_KEY").exit_code == 0
    out = cli("score", "-q", "--engine", "openai", "--logprobs-top", "2")
    assert out.exit_code == 0 and "scored 10 cells, failed 0" in out.output, out.output
    with db.session_scope(engine) as s:
        rows = s.execute(sa.select(Score.engine_version, Score.partial, Score.mass)).all()
    assert {(v, p) for v, p, _ in rows} == {(f"{server.url}, model tiny, top-2", True)}
    out = cli("rank", "--dataset", "d")
    assert out.exit_code == 0, out.output
    assert "warning: 10 cells are partial (scored with --logprobs-top" in out.output


def test_scoring_from_inside_an_event_loop_works(server, tiny_version):
    """A notebook runs an event loop: the engine's requests then run on a thread of their own."""
    import asyncio

    reqs = requests(records(1), "shared-context")
    scorer = scorer_for(server, tiny_version)

    async def notebook_cell():
        return scorer.score(reqs)

    assert cell_delta(tiny_version[1].score(reqs), asyncio.run(notebook_cell())) <= 1e-4


def test_a_chat_registration_is_a_version_of_its_own_and_never_mixes_with_completions_cells(
        server, tiny_model_dir, cli, engine, tmp_path):
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records(2)), encoding="utf-8")
    assert cli("init").exit_code == 0
    assert cli("ingest", data, "--dataset", "d").exit_code == 0
    served = ("--endpoint", server.url, "--served-model", "tiny", "--tokenizer", tiny_model_dir,
              "--api-key-env", "TINY_KEY")
    assert cli("model", "add", "srv", *served).exit_code == 0
    assert "scored 10 cells" in cli("score", "-q").output
    out = cli("model", "add", "srv", *served, "--chat")
    assert out.exit_code == 0 and "added" in out.output and "(chat layout)" in out.output, out.output
    out = cli("score", "-q")
    assert out.exit_code == 0 and "scored 10 cells, failed 0" in out.output, out.output
    with db.session_scope(engine) as s:
        versions = {m.id: (m.dtype, m.fingerprint, m.active) for m in s.scalars(sa.select(LLM))}
        rows = s.execute(sa.select(Score.model_id, Score.engine_version)).all()
    (done, _), (chat, _) = sorted(versions.items(), key=lambda kv: kv[1][2])
    assert versions[done][0] == "server" and versions[chat][0] == CHAT_DTYPE
    assert versions[done][1] != versions[chat][1]
    assert Counter((m, v) for m, v in rows) == {
        (done, f"{server.url}, model tiny, exact ({TOKEN_IDS})"): 10,
        (chat, f"{server.url}, model tiny, chat top-20"): 10}
    assert cli("model", "add", "srv", *served, "--chat").output.count("unchanged") == 1
    out = cli("model", "add", "local", "--source", tiny_model_dir, "--chat")
    assert out.exit_code == 1 and "--chat go with --endpoint" in out.output
