"""The `openai` scoring engine: raters behind an OpenAI-compatible completions endpoint.

A model version registered with `selectit model add NAME --endpoint URL --served-model ID` is
scored by an inference server that already holds its weights (vLLM, SGLang, TGI, llama.cpp, a
hosted API); the worker needs no GPU. Everything before and after the server is
`selectit.preparation`, shared with the torch and vLLM engines: the model version's own tokenizer
(`--tokenizer`), the same truncation and the same label ids. The prompt goes to the server as
token ids, so the server reads exactly the tokens the other engines read.

How a cell's label probabilities are read (chosen once per engine by probing the server):
- `exact`, one request per cell: `max_tokens=1` with `logprob_token_ids` = the label ids (vLLM's
  sampling parameter, passed through by its OpenAI server): the full-vocabulary log-softmax at the
  prompt's last token, read at exactly those ids, whatever their rank.
- `exact`, K requests per cell (`echo`): where the server ignores `logprob_token_ids`, the prompt
  followed by each label token is sent with `echo=true, max_tokens=0, logprobs=0`, and the
  label's prompt log-probability is read at the last position. Prompt log-probabilities can
  keep a server's prefix cache from being used.
- `top-k` (`--logprobs-top K`), one request per cell: `max_tokens=1, logprobs=K`; a label outside
  the top K counts as 0 and the cell is `partial` (its mass is below what the model gives).

Faults: at most `concurrency` requests are in flight; 429, 5xx, timeouts, broken connections and
unreadable answers are retried with exponential backoff (a `Retry-After` header is honoured) up
to `max_retries` times, then the cell fails with the server's message (never a default score).
Other 4xx answers (a prompt longer than the server's context) fail the cell at once. The API key
is read from the named environment variable when a request is made; it is never stored, and
any message that would quote it has it masked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from selectit.contract import CellResult, RatingRequest, ScoringEngine
from selectit.errors import SelectitError
from selectit.scoring.preparation import Prepared, RequestPreparation

#: How exact probabilities are read; see the module docstring.
TOKEN_IDS = "logprob_token_ids"
ECHO = "echo"
#: `/v1/models` fields that change from one call to the next on some servers (left out of the fingerprint).
VOLATILE_MODEL_FIELDS = ("created", "permission")
#: Answers worth another try: rate limits, overload, server errors.
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: Answers that say the key is wrong: no probing goes on after them.
REFUSED = ("HTTP 401", "HTTP 403")


class EndpointError(SelectitError):
    """An endpoint that cannot be used as registered, or a request that failed for good."""


# --------------------------------------------------------------------------------------------
# Endpoints


def normalize_endpoint(url: str) -> str:
    """The base URL of the OpenAI-compatible API: `/v1` added when no path is given.

    >>> normalize_endpoint("http://127.0.0.1:8000")
    'http://127.0.0.1:8000/v1'
    >>> normalize_endpoint("https://api.example.com/v1/")
    'https://api.example.com/v1'
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise EndpointError(f"--endpoint {url!r} is not an http(s) URL; give e.g. http://127.0.0.1:8000/v1")
    if parts.username or parts.password:
        raise EndpointError("--endpoint holds credentials; put the API key in an environment variable and name "
                            "it with --api-key-env (the key is never stored)")
    if parts.query or parts.fragment:
        raise EndpointError(f"--endpoint {url!r} has a query or fragment; give the API's base URL only")
    path = parts.path.rstrip("/") or "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def endpoint_host(url: str) -> str:
    """`scheme://host[:port]` of an endpoint: what provenance records (no path, no credentials)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def endpoint_fingerprint(served_model: str, listing: dict[str, Any]) -> str:
    """sha256 of the served model id and what `/v1/models` says of it (volatile fields left out):
    another deployment (other weights path, context, owner) is another model version."""
    stable = {k: v for k, v in listing.items() if k not in VOLATILE_MODEL_FIELDS}
    blob = json.dumps({"served_model": served_model, "listing": stable}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Endpoint:
    """Where a model is served, and which environment variable holds its API key (if any)."""

    url: str  # normalized base URL, e.g. http://127.0.0.1:8000/v1
    served_model: str
    api_key_env: str | None = None

    @property
    def host(self) -> str:
        return endpoint_host(self.url)

    def api_key(self) -> str | None:
        """The key, read now from the environment (never kept anywhere else)."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise EndpointError(f"${self.api_key_env} is not set; the model's endpoint needs its API key there "
                                f"(registered with --api-key-env {self.api_key_env})")
        return key


# --------------------------------------------------------------------------------------------
# The HTTP client


class RequestFailed(Exception):
    """A request that failed for good; `str()` is the server's message (with the key masked)."""


class EndpointClient:
    """Async POST/GET of JSON with bounded concurrency, retries and a per-request timeout."""

    def __init__(self, endpoint: Endpoint, *, concurrency: int = 32, timeout: float = 60.0, max_retries: int = 8,
                 backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.requests = 0  # HTTP requests sent, retries included
        self.retries = 0

    def run(self, work: Callable[[Any], Any]) -> Any:
        """`await work(session)` on a fresh event loop, where `session.post(path, body)` sends a request."""
        import httpx

        async def main() -> Any:
            key = self.endpoint.api_key()
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
            async with httpx.AsyncClient(headers=headers, timeout=self.timeout, limits=limits) as http:
                return await work(_Session(self, http, asyncio.Semaphore(self.concurrency), key))

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        # Called from inside an event loop (a notebook): run on a thread of its own.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, main()).result()


class _Session:
    def __init__(self, client: EndpointClient, http: Any, gate: asyncio.Semaphore, key: str | None) -> None:
        self.client, self.http, self.gate, self.key = client, http, gate, key

    def _mask(self, text: str) -> str:
        return text.replace(self.key, "***") if self.key else text

    async def get(self, path: str) -> dict[str, Any]:
        return await self._send("GET", path, None)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._send("POST", path, body)

    async def _send(self, method: str, path: str, body: dict[str, Any] | None) -> dict[str, Any]:
        import httpx

        c = self.client
        url = c.endpoint.url + path
        last = "no answer"
        for attempt in range(c.max_retries + 1):
            wait: float | None = None
            async with self.gate:
                c.requests += 1
                try:
                    resp = await self.http.request(method, url, json=body)
                except httpx.TimeoutException:
                    last = f"no answer from {c.endpoint.host} within {c.timeout:g} s"
                except httpx.TransportError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    if resp.status_code == 200:
                        try:
                            data = resp.json()
                        except ValueError:
                            data = None
                        if isinstance(data, dict):
                            return data
                        last = f"the server answered 200 with no JSON object: {resp.text[:300]!r}"
                    else:
                        last = f"HTTP {resp.status_code}: {_server_message(resp)}"
                        if resp.status_code not in RETRY_STATUS:
                            raise RequestFailed(self._mask(last))
                        wait = _retry_after(resp)
            if attempt == c.max_retries:
                break
            c.retries += 1
            delay = min(c.max_backoff, c.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
            await asyncio.sleep(min(c.max_backoff, wait) if wait is not None else delay)
        raise RequestFailed(self._mask(f"{last} (after {c.max_retries + 1} tries)"))


def _server_message(resp: Any) -> str:
    """The error message in an OpenAI-style error body, else the start of the body."""
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:500].strip() or resp.reason_phrase
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if msg:
                return str(msg)[:1000]
        elif isinstance(err, str):
            return err[:1000]
        if isinstance(data.get("detail"), str):
            return data["detail"][:1000]
    return json.dumps(data)[:500]


def _retry_after(resp: Any) -> float | None:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "")))
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Reading log-probabilities out of a completions answer


def _token_id(key: str, texts: dict[str, int]) -> int | None:
    """A logprobs key: `token_id:123` (vLLM's `return_tokens_as_token_ids`), else a token's text
    matched against the decoded label tokens (`texts`: text → id)."""
    if key.startswith("token_id:"):
        try:
            return int(key[len("token_id:"):])
        except ValueError:
            return None
    return texts.get(key)


def _choice_logprobs(answer: dict[str, Any]) -> dict[str, Any]:
    try:
        logprobs = answer["choices"][0]["logprobs"]
    except (KeyError, IndexError, TypeError):
        raise RuntimeError(f"the answer has no choices[0].logprobs: {json.dumps(answer)[:300]}") from None
    if not isinstance(logprobs, dict):
        raise RuntimeError("the server returned no log-probabilities (choices[0].logprobs is empty)")
    return logprobs


def first_position_logprobs(answer: dict[str, Any], labels: Sequence[int], tokenizer: Any) -> dict[int, float]:
    """{label token id: log p} of the labels found at the first generated position of an answer."""
    top = _choice_logprobs(answer).get("top_logprobs") or []
    if not top or not isinstance(top[0], dict):
        raise RuntimeError("the server returned no top log-probabilities for the generated token")
    texts = {tokenizer.decode([t]): t for t in labels}
    out: dict[int, float] = {}
    for key, value in top[0].items():
        tid = _token_id(str(key), texts)
        if tid in labels and value is not None:
            out[tid] = float(value)
    return out


def echoed_logprob(answer: dict[str, Any], position: int, token: int, tokenizer: Any) -> float:
    """log p of the echoed prompt token at `position` (checked to be `token`)."""
    logprobs = _choice_logprobs(answer)
    tokens, values = logprobs.get("tokens") or [], logprobs.get("token_logprobs") or []
    if len(values) <= position or values[position] is None:
        raise RuntimeError(f"the server echoed {len(values)} prompt log-probabilities, not the label's at "
                           f"position {position}")
    if len(tokens) > position and _token_id(str(tokens[position]), {tokenizer.decode([token]): token}) not in (token, None):
        raise RuntimeError(f"the server echoed token {tokens[position]!r} where the label token id {token} was sent")
    return float(values[position])


# --------------------------------------------------------------------------------------------
# The engine


class OpenAIScorer(RequestPreparation, ScoringEngine):
    """A model served behind an OpenAI-compatible endpoint that rates samples (see `selectit.scorer`)."""

    engine = "openai"

    def __init__(self, client: EndpointClient, tokenizer: Any, *, model_id: int = 0, max_tokens: int = 2048,
                 label_ids: dict[str, list[int]] | None = None, top_k: int | None = None,
                 method: str | None = None, token_ids_as_keys: bool = True) -> None:
        self.client = client
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.max_tokens = max_tokens
        self.top_k = top_k
        self.method = method  # TOKEN_IDS, ECHO or "top-K"; None → probed on first use
        self.token_ids_as_keys = token_ids_as_keys  # send vLLM's return_tokens_as_token_ids
        self.forwards = 0  # cells scored (one server forward each in the token-ids and top-k modes)
        self._init_labels(label_ids)

    @property
    def mode(self) -> str:
        return f"top-{self.top_k}" if self.top_k else f"exact ({self.method or 'not probed yet'})"

    @property
    def engine_version(self) -> str:
        """Provenance: the endpoint's host, the served model and how probabilities were read."""
        ep = self.client.endpoint
        return f"{ep.host}, model {ep.served_model}, {self.mode}"[:200]

    def _body(self, ids: list[int], **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.client.endpoint.served_model, "prompt": ids, "temperature": 0.0,
                                "stream": False, **extra}
        if self.token_ids_as_keys:
            body["return_tokens_as_token_ids"] = True
        return body

    # --- probing -------------------------------------------------------------------------------

    def probe(self) -> str:
        """Find how this server gives the label probabilities; sets and returns `method`.

        Exact mode: one short request with `logprob_token_ids`; answered with every asked id → one
        request per cell. Else `echo` (K requests per cell), checked the same way; a server with
        neither is an error that names `--logprobs-top`. A server that refuses vLLM's
        `return_tokens_as_token_ids` is read by token text instead (both modes).
        """
        ids = self.tokenizer("Rating: ", add_special_tokens=True)["input_ids"]
        labels = list((next(iter(self._labels_by_context.values()), None) or [0, 1])[:2])

        async def ask(session: _Session, body: dict[str, Any], prompt: list[int] = ids) -> dict[str, Any]:
            try:
                return await session.post("/completions", self._body(prompt, **body))
            except RequestFailed as exc:
                if "return_tokens_as_token_ids" not in str(exc) or not self.token_ids_as_keys:
                    raise
                self.token_ids_as_keys = False  # a strict server: key the logprobs by token text
                return await session.post("/completions", self._body(prompt, **body))

        async def work(session: _Session) -> str:
            if self.top_k:
                first_position_logprobs(await ask(session, {"max_tokens": 1, "logprobs": self.top_k}), labels,
                                        self.tokenizer)
                return f"top-{self.top_k}"
            try:
                answer = await ask(session, {"max_tokens": 1, "logprobs": 1, "logprob_token_ids": labels})
                if all(t in first_position_logprobs(answer, labels, self.tokenizer) for t in labels):
                    return TOKEN_IDS
            except RequestFailed as exc:
                if str(exc).startswith(REFUSED):
                    raise
            except RuntimeError:
                pass  # a server without logprob_token_ids
            answer = await ask(session, {"max_tokens": 0, "echo": True, "logprobs": 0}, ids + [labels[0]])
            echoed_logprob(answer, len(ids), labels[0], self.tokenizer)
            return ECHO

        try:
            self.method = self.client.run(work)
        except (RequestFailed, RuntimeError) as exc:
            host, served = self.client.endpoint.host, self.client.endpoint.served_model
            if str(exc).startswith(REFUSED):
                raise EndpointError(f"{host} refused the request ({exc}); check the API key "
                                    f"(${self.client.endpoint.api_key_env or 'none given: --api-key-env'})") from exc
            if self.top_k:
                raise EndpointError(f"{host} ({served}) gives no top log-probabilities: {exc}") from exc
            raise EndpointError(
                f"{host} ({served}) gives neither the log-probabilities of chosen tokens nor echoed prompt "
                f"log-probabilities ({exc}); use --logprobs-top K (labels outside the top K count as 0)") from exc
        return self.method

    # --- scoring -------------------------------------------------------------------------------

    def score(self, requests: Sequence[RatingRequest],
              progress: Callable[[int], None] | None = None) -> list[CellResult]:
        """Score every (request, prompt) cell; `progress(n)` is called with cells finished."""
        if self.method is None:
            self.probe()
        results: list[CellResult] = []
        cells: list[tuple[Prepared, int, list[int]]] = []
        for req in requests:
            try:
                prep = self._prepare(req)
                cells += [(prep, k, self._labels(p)[: req.scale]) for k, p in enumerate(req.prompts)]
            except Exception as exc:  # noqa: BLE001 - one bad request never stops the batch
                results.extend(self._failed(req, range(len(req.prompts)), exc))

        async def work(session: _Session) -> list[tuple[list[float] | None, bool, str | None]]:
            return await asyncio.gather(*(self._cell_probs(session, prep.ids[k], labels)
                                          for prep, k, labels in cells))

        outcomes = self.client.run(work) if cells else []
        self.forwards += len(cells)
        for (prep, k, _), (probs, partial, err) in zip(cells, outcomes):
            cell = self._cell(prep, k, probs, err)
            results.append(dataclasses.replace(cell, partial=True) if partial and cell.ok else cell)
        if progress:
            progress(len(results))
        return results

    def close(self) -> None:
        """Nothing to free: each `score` call opens and closes its own connections."""

    async def _cell_probs(self, session: _Session, ids: list[int],
                          labels: list[int]) -> tuple[list[float] | None, bool, str | None]:
        """(label probabilities, partial, error) of one cell; never raises."""
        try:
            if self.top_k:
                got = first_position_logprobs(await session.post("/completions", self._body(
                    ids, max_tokens=1, logprobs=self.top_k)), labels, self.tokenizer)
                return [math.exp(got[t]) if t in got else 0.0 for t in labels], any(t not in got for t in labels), None
            if self.method == TOKEN_IDS:
                got = first_position_logprobs(await session.post("/completions", self._body(
                    ids, max_tokens=1, logprobs=1, logprob_token_ids=labels)), labels, self.tokenizer)
                missing = [t for t in labels if t not in got]
                if missing:
                    raise RuntimeError(f"the server returned no log-probability for label token ids {missing}")
                return [math.exp(got[t]) for t in labels], False, None
            answers = await asyncio.gather(*(session.post("/completions", self._body(
                ids + [t], max_tokens=0, echo=True, logprobs=0)) for t in labels))
            return [math.exp(echoed_logprob(a, len(ids), t, self.tokenizer)) for a, t in zip(answers, labels)], False, None
        except RequestFailed as exc:
            return None, False, f"{self.client.endpoint.host}: {exc}"
        except Exception as exc:  # noqa: BLE001 - an unreadable answer fails only its cell
            return None, False, f"{self.client.endpoint.host}: {type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------------------
# Registration and loading


def read_model_listing(endpoint: Endpoint, *, timeout: float = 30.0) -> dict[str, Any]:
    """What `/v1/models` says of the served model; an error lists the ids the server serves."""
    client = EndpointClient(endpoint, concurrency=1, timeout=timeout, max_retries=2)

    async def work(session: _Session) -> dict[str, Any]:
        return await session.get("/models")

    try:
        answer = client.run(work)
    except RequestFailed as exc:
        raise EndpointError(f"{endpoint.host}: cannot list the served models at {endpoint.url}/models ({exc})") from None
    entries = answer.get("data") if isinstance(answer.get("data"), list) else []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("id") == endpoint.served_model:
            return entry
    ids = ", ".join(repr(e.get("id")) for e in entries if isinstance(e, dict)) or "none"
    raise EndpointError(f"{endpoint.host} does not serve a model {endpoint.served_model!r} (it serves: {ids}); "
                        f"give one of those with --served-model")


def model_endpoint(model: Any) -> Endpoint:
    """The endpoint of a model version (an `LLM` row with `endpoint` set)."""
    if not getattr(model, "endpoint", None):
        raise EndpointError(f"model {model.name!r} is not served by an endpoint; register it with "
                            f"`selectit model add {model.name} --endpoint URL --served-model ID`, or score it "
                            f"with --engine torch or vllm")
    return Endpoint(model.endpoint, model.served_model, model.api_key_env)


def load_openai_scorer(model: Any, options: Any = None, **client_kwargs: Any) -> OpenAIScorer:
    """An `OpenAIScorer` for a model version registered with `--endpoint` (a `ModelSpec` or a
    `models` row), with the engine options' concurrency, timeout, retries and `--logprobs-top`;
    the server is probed now, so a wrong key or an unusable server fails before a job is claimed."""
    from selectit.scoring import loading
    from selectit.scoring.engines import EngineOptions

    options = options or EngineOptions(engine="openai")
    endpoint = model_endpoint(model)
    endpoint.api_key()  # a missing key fails here, before any job is claimed
    tokenizer = loading.load_tokenizer(loading.resolve_source(model.source))
    client = EndpointClient(endpoint, concurrency=options.concurrency, timeout=options.request_timeout,
                            max_retries=options.max_retries, **client_kwargs)
    scorer = OpenAIScorer(client, tokenizer, model_id=model.id, max_tokens=model.max_tokens,
                          label_ids=dict(model.label_ids or {}), top_k=options.logprobs_top)
    scorer.probe()
    return scorer
