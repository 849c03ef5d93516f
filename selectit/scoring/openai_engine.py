"""The `openai` scoring engine: raters behind an OpenAI-compatible completions endpoint.

A model version registered with `selectit model add NAME --endpoint URL --served-model ID` is
scored by an inference server that already holds its weights (vLLM, SGLang, TGI, llama.cpp, a
hosted API); the worker needs no GPU. Everything before and after the server is
`selectit.preparation`, shared with the torch and vLLM engines: the model version's own tokenizer
(`--tokenizer`), the same truncation and the same label ids. The prompt goes to the server as
token ids, so the server reads exactly the tokens the other engines read; a server that refuses a
token-id prompt (a 400/422 to the probe) gets text, after its tokenization of a test text was
checked once against the local tokenizer (`check_tokenization`: vLLM's `/tokenize`, else the echoed
prompt, else `usage.prompt_tokens`), and every answer's token count is compared again.

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
- the chat layout (a model version registered with `--chat`), one request per cell: the rendered
  prompt as one user message to `/chat/completions` with `max_tokens=1, temperature=0,
  logprobs=true, top_logprobs=K`; a digit's probability is that of the first answer token reading
  as that digit. The server's chat template makes it another layout: another model version.

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
import logging
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

logger = logging.getLogger(__name__)

#: How exact probabilities are read; see the module docstring.
TOKEN_IDS = "logprob_token_ids"
ECHO = "echo"
#: The chat layout: the rendered prompt as one user message to /chat/completions (top-k only).
CHAT = "chat"
#: The dtype column of a model version registered with --chat (a completions one reads "server").
CHAT_DTYPE = "server-chat"
#: Top log-probabilities asked in the chat layout without --logprobs-top (the most OpenAI's API gives).
DEFAULT_CHAT_TOP = 20
#: How the prompt is sent: as token ids (vLLM, SGLang) or as text (servers that take nothing else).
TOKEN_PROMPT = "token-ids"
TEXT = "text"
#: What a text-only server is asked to tokenize once: a rating prompt's kinds of text (prose,
#: code, digits, blank lines, accents, CJK, an emoji).
TOKENIZATION_CHECK = ("Below is an instruction that describes a task.\n\n### Instruction:\nTranslate "
                      "'café crème' into 日本語 and explain  `x = [1, 22, 333]` in 2 sentences 🙂.\n\n"
                      "### Response:\n  Done —\tok.\n\nRate the response from 1 to 5.\nRating: ")
MISMATCH_HINT = ("give the served model's own tokenizer with --tokenizer, or serve it where a token-id prompt is "
                 "accepted (vLLM, SGLang)")
#: `/v1/models` fields that change from one call to the next on some servers (left out of the fingerprint).
VOLATILE_MODEL_FIELDS = ("created", "permission")
#: Answers worth another try: rate limits, overload, server errors.
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: Answers that say the key is wrong: no probing goes on after them.
REFUSED = ("HTTP 401", "HTTP 403")


class EndpointError(SelectitError):
    """An endpoint that cannot be used as registered, or a request that failed for good."""


class TokenizationMismatch(EndpointError):
    """A text-only server that splits text into other tokens than the local tokenizer."""


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


def endpoint_fingerprint(served_model: str, listing: dict[str, Any], *, chat: bool = False) -> str:
    """sha256 of the served model id and what `/v1/models` says of it (volatile fields left out):
    another deployment (other weights path, context, owner) is another model version, and so is
    the chat layout (the server wraps the prompt in its chat template: other cells)."""
    stable = {k: v for k, v in listing.items() if k not in VOLATILE_MODEL_FIELDS}
    fields: dict[str, Any] = {"served_model": served_model, "listing": stable}
    if chat:
        fields["api"] = CHAT
    blob = json.dumps(fields, sort_keys=True, separators=(",", ":"))
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

    async def post_url(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to a full URL on the endpoint's server (e.g. vLLM's `/tokenize` beside `/v1`)."""
        return await self._send("POST", "", body, url=url)

    async def _send(self, method: str, path: str, body: dict[str, Any] | None,
                    url: str | None = None) -> dict[str, Any]:
        import httpx

        c = self.client
        url = url or c.endpoint.url + path
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


def echoed_logprob(answer: dict[str, Any], position: int, token: int, tokenizer: Any, *,
                   exact_length: bool = False) -> float:
    """log p of the echoed prompt token at `position` (checked to be `token`); `exact_length`: the
    label must be the last echoed token (a text prompt: the server's own tokenization is checked)."""
    logprobs = _choice_logprobs(answer)
    tokens, values = logprobs.get("tokens") or [], logprobs.get("token_logprobs") or []
    if exact_length and len(values) != position + 1:
        raise RuntimeError(f"the server read the prompt text and label as {len(values)} tokens where the local "
                           f"tokenizer has {position + 1}; {MISMATCH_HINT}")
    if len(values) <= position or values[position] is None:
        raise RuntimeError(f"the server echoed {len(values)} prompt log-probabilities, not the label's at "
                           f"position {position}")
    if len(tokens) > position and _token_id(str(tokens[position]), {tokenizer.decode([token]): token}) not in (token, None):
        raise RuntimeError(f"the server echoed token {tokens[position]!r} where the label token id {token} was sent")
    return float(values[position])


def chat_digit_logprobs(answer: dict[str, Any]) -> dict[str, float]:
    """{digit: log p} of the digits among the top log-probabilities of a chat answer's first token.

    A digit with and without surrounding space (`"3"`, `" 3"`) is one answer: their probabilities add.
    """
    try:
        first = answer["choices"][0]["logprobs"]["content"][0]
        top = first["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        raise RuntimeError(f"the chat answer has no choices[0].logprobs.content[0].top_logprobs: "
                           f"{json.dumps(answer)[:300]}") from None
    if not isinstance(top, list):
        raise RuntimeError("the server returned no top log-probabilities for the chat answer's first token")
    probs: dict[str, float] = {}
    for entry in top:
        if not isinstance(entry, dict) or entry.get("logprob") is None:
            continue
        text = str(entry.get("token", "")).strip()
        if len(text) == 1 and text in "123456789":
            probs[text] = probs.get(text, 0.0) + math.exp(float(entry["logprob"]))
    return {d: math.log(p) for d, p in probs.items() if p > 0}


# --------------------------------------------------------------------------------------------
# The engine


class OpenAIScorer(RequestPreparation, ScoringEngine):
    """A model served behind an OpenAI-compatible endpoint that rates samples (see `selectit.scorer`)."""

    engine = "openai"

    def __init__(self, client: EndpointClient, tokenizer: Any, *, model_id: int = 0, max_tokens: int = 2048,
                 label_ids: dict[str, list[int]] | None = None, top_k: int | None = None,
                 method: str | None = None, token_ids_as_keys: bool = True, prompt_form: str | None = None,
                 chat: bool = False) -> None:
        self.client = client
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.max_tokens = max_tokens
        self.chat = chat  # the chat layout: one user message to /chat/completions, always top-k
        self.top_k = (top_k or DEFAULT_CHAT_TOP) if chat else top_k
        self.method = CHAT if chat else method  # TOKEN_IDS, ECHO, "top-K" or CHAT; None → probed on first use
        self.prompt_form = TEXT if chat else prompt_form  # TOKEN_PROMPT or TEXT; None → probed
        self.token_ids_as_keys = token_ids_as_keys and not chat  # send vLLM's return_tokens_as_token_ids
        self.forwards = 0  # cells scored (one server forward each in the token-ids and top-k modes)
        self._init_labels(label_ids)

    @property
    def mode(self) -> str:
        if self.chat:
            return f"chat top-{self.top_k}"
        text = ", text prompts" if self.prompt_form == TEXT else ""
        return f"top-{self.top_k}{text}" if self.top_k else f"exact ({self.method or 'not probed yet'}{text})"

    @property
    def engine_version(self) -> str:
        """Provenance: the endpoint's host, the served model and how probabilities were read."""
        ep = self.client.endpoint
        return f"{ep.host}, model {ep.served_model}, {self.mode}"[:200]

    def _body(self, prompt: list[int] | str, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.client.endpoint.served_model, "prompt": prompt, "temperature": 0.0,
                                "stream": False, **extra}
        if self.token_ids_as_keys:
            body["return_tokens_as_token_ids"] = True
        return body

    def _prompt(self, ids: list[int], text: str) -> list[int] | str:
        return text if self.prompt_form == TEXT else ids

    async def _ask(self, session: _Session, prompt: list[int] | str, **body: Any) -> dict[str, Any]:
        """A completions request; a server that refuses `return_tokens_as_token_ids` is asked again
        without it (and read by token text from then on)."""
        try:
            return await session.post("/completions", self._body(prompt, **body))
        except RequestFailed as exc:
            if "return_tokens_as_token_ids" not in str(exc) or not self.token_ids_as_keys:
                raise
            self.token_ids_as_keys = False  # a strict server: key the logprobs by token text
            return await session.post("/completions", self._body(prompt, **body))

    # --- probing -------------------------------------------------------------------------------

    def probe(self) -> str:
        """Find how this server gives the label probabilities; sets and returns `method`.

        The prompt form first: a token-id prompt; a server that refuses it with a 400/422 gets text,
        and its tokenization is checked against the local tokenizer (`check_tokenization`).
        Exact mode: one short request with `logprob_token_ids`; answered with every asked id → one
        request per cell. Else `echo` (K requests per cell), checked the same way; a server with
        neither is an error that names `--logprobs-top`. A server that refuses vLLM's
        `return_tokens_as_token_ids` is read by token text instead (both modes). The chat layout
        asks one chat completion with `top_logprobs`.
        """
        text = "Rating: "
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        labels = list((next(iter(self._labels_by_context.values()), None) or [0, 1])[:2])

        async def work(session: _Session) -> str:
            if self.chat:
                chat_digit_logprobs(await session.post("/chat/completions", self._chat_body(text)))
                return CHAT
            if self.prompt_form is None:
                self.prompt_form = await self._probe_prompt_form(session, ids, text)
            if self.prompt_form == TEXT:
                await self.check_tokenization(session)
            if self.method is not None:  # given: only the prompt form was left to find
                return self.method
            prompt = self._prompt(ids, text)
            if self.top_k:
                first_position_logprobs(await self._ask(session, prompt, max_tokens=1, logprobs=self.top_k), labels,
                                        self.tokenizer)
                return f"top-{self.top_k}"
            try:
                answer = await self._ask(session, prompt, max_tokens=1, logprobs=1, logprob_token_ids=labels)
                if all(t in first_position_logprobs(answer, labels, self.tokenizer) for t in labels):
                    return TOKEN_IDS
            except RequestFailed as exc:
                if str(exc).startswith(REFUSED):
                    raise
            except RuntimeError:
                pass  # a server without logprob_token_ids
            answer = await self._ask(session, self._prompt(ids + [labels[0]], text + self._digit_text(labels, 0)),
                                     max_tokens=0, echo=True, logprobs=0)
            echoed_logprob(answer, len(ids), labels[0], self.tokenizer, exact_length=self.prompt_form == TEXT)
            return ECHO

        try:
            self.method = self.client.run(work)
        except TokenizationMismatch:
            raise
        except (RequestFailed, RuntimeError) as exc:
            host, served = self.client.endpoint.host, self.client.endpoint.served_model
            if str(exc).startswith(REFUSED):
                raise EndpointError(f"{host} refused the request ({exc}); check the API key "
                                    f"(${self.client.endpoint.api_key_env or 'none given: --api-key-env'})") from exc
            if self.chat:
                raise EndpointError(f"{host} ({served}) gives no top log-probabilities on /chat/completions: "
                                    f"{exc}") from exc
            if self.top_k:
                raise EndpointError(f"{host} ({served}) gives no top log-probabilities: {exc}") from exc
            raise EndpointError(
                f"{host} ({served}) gives neither the log-probabilities of chosen tokens nor echoed prompt "
                f"log-probabilities ({exc}); use --logprobs-top K (labels outside the top K count as 0)") from exc
        return self.method

    async def _probe_prompt_form(self, session: _Session, ids: list[int], text: str) -> str:
        """TOKEN_PROMPT where the server takes a token-id prompt, TEXT where it refuses one (400/422)."""
        try:
            await self._ask(session, ids, max_tokens=1)
            return TOKEN_PROMPT
        except RequestFailed as exc:
            if not str(exc).startswith(("HTTP 400", "HTTP 422")):
                raise
            try:
                await self._ask(session, text, max_tokens=1)
            except RequestFailed:
                raise exc from None  # not the prompt form: the first answer says what is wrong
            return TEXT

    async def check_tokenization(self, session: _Session, text: str = TOKENIZATION_CHECK) -> str:
        """Check that the server splits `text` into the tokens the local tokenizer gives; returns
        how it was checked. Raises `TokenizationMismatch` naming the first differing position.

        The server's own tokenization is read, in this order, from vLLM's `/tokenize` (also at the
        API's root), from the echoed prompt (`echo=true, logprobs=0`), or, as a count only, from the
        answer's `usage.prompt_tokens`; a server with none of these cannot be checked (a warning).
        """
        local = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        ep = self.client.endpoint
        root = ep.url[: -len("/v1")] if ep.url.endswith("/v1") else ep.url
        for url in (root + "/tokenize", ep.url + "/tokenize"):
            try:
                answer = await session.post_url(url, {"model": ep.served_model, "prompt": text,
                                                      "add_special_tokens": True})
            except RequestFailed:
                continue
            tokens = answer.get("tokens")
            if isinstance(tokens, list) and all(isinstance(t, int) for t in tokens):
                self._compare_tokens(list(tokens), local, "/tokenize")
                return "/tokenize"
        answer = None
        try:
            answer = await self._ask(session, text, max_tokens=0, echo=True, logprobs=0)
            echoed = (answer["choices"][0]["logprobs"] or {}).get("tokens")
        except (RequestFailed, KeyError, IndexError, TypeError):
            echoed = None
        if isinstance(echoed, list) and echoed:
            server = [self._echoed_id(str(t), local[i] if i < len(local) else None) for i, t in enumerate(echoed)]
            self._compare_tokens(server, local, "the echoed prompt")
            return "echo"
        if answer is None:
            try:
                answer = await self._ask(session, text, max_tokens=1)
            except RequestFailed:
                answer = {}
        count = (answer.get("usage") or {}).get("prompt_tokens") if isinstance(answer, dict) else None
        if isinstance(count, int):
            if count != len(local):
                raise TokenizationMismatch(
                    f"{ep.host} ({ep.served_model}) reads the tokenization check text as {count} tokens where the "
                    f"local tokenizer has {len(local)}; {MISMATCH_HINT}")
            return "usage"
        logger.warning("warning: %s gives no way to check its tokenization (no /tokenize, no echo, no usage); "
                       "text prompts are sent unchecked", ep.host)
        return "unchecked"

    def _echoed_id(self, key: str, expected: int | None) -> int | None:
        """The token id of an echoed token (`token_id:N`, or its text when it is the expected token's)."""
        if key.startswith("token_id:"):
            return _token_id(key, {})
        return expected if expected is not None and self.tokenizer.decode([expected]) == key else None

    def _compare_tokens(self, server: list[int | None], local: list[int], how: str) -> None:
        if server == local:
            return
        i = next((i for i, (a, b) in enumerate(zip(server, local)) if a != b), min(len(server), len(local)))
        ep = self.client.endpoint

        def show(seq: list, i: int) -> str:
            if i >= len(seq):
                return "(end)"
            return repr(self.tokenizer.decode([seq[i]])) if seq[i] is not None else "another token"

        raise TokenizationMismatch(
            f"{ep.host} ({ep.served_model}) tokenizes text differently from the local tokenizer ({how}): "
            f"first difference at token {i} (server {show(server, i)}, local {show(local, i)}; "
            f"{len(server)} vs {len(local)} tokens); {MISMATCH_HINT}")

    def _digit_text(self, labels: list[int], k: int) -> str:
        return self.tokenizer.decode([labels[k]]).strip() or str(k + 1)

    def _chat_body(self, text: str) -> dict[str, Any]:
        return {"model": self.client.endpoint.served_model, "messages": [{"role": "user", "content": text}],
                "max_tokens": 1, "temperature": 0.0, "logprobs": True, "top_logprobs": self.top_k, "stream": False}

    # --- scoring -------------------------------------------------------------------------------

    def score(self, requests: Sequence[RatingRequest],
              progress: Callable[[int], None] | None = None) -> list[CellResult]:
        """Score every (request, prompt) cell; `progress(n)` is called with cells finished."""
        if self.method is None or (self.prompt_form is None and not self.chat):
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
            return await asyncio.gather(*(self._cell_probs(session, prep.ids[k], (prep.texts or [])[k], labels)
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

    def _check_count(self, answer: dict[str, Any], ids: list[int]) -> None:
        """A text prompt: the server must have read as many tokens as the local tokenizer made."""
        count = (answer.get("usage") or {}).get("prompt_tokens")
        if self.prompt_form == TEXT and isinstance(count, int) and count != len(ids):
            raise RuntimeError(f"the server read the prompt text as {count} tokens where the local tokenizer has "
                               f"{len(ids)}; {MISMATCH_HINT}")

    async def _cell_probs(self, session: _Session, ids: list[int], text: str,
                          labels: list[int]) -> tuple[list[float] | None, bool, str | None]:
        """(label probabilities, partial, error) of one cell; never raises."""
        try:
            if self.chat:
                got = chat_digit_logprobs(await session.post("/chat/completions", self._chat_body(text)))
                digits = [str(k + 1) for k in range(len(labels))]
                return ([math.exp(got[d]) if d in got else 0.0 for d in digits],
                        any(d not in got for d in digits), None)
            prompt = self._prompt(ids, text)
            if self.top_k:
                answer = await self._ask(session, prompt, max_tokens=1, logprobs=self.top_k)
                self._check_count(answer, ids)
                got = first_position_logprobs(answer, labels, self.tokenizer)
                return [math.exp(got[t]) if t in got else 0.0 for t in labels], any(t not in got for t in labels), None
            if self.method == TOKEN_IDS:
                answer = await self._ask(session, prompt, max_tokens=1, logprobs=1, logprob_token_ids=labels)
                self._check_count(answer, ids)
                got = first_position_logprobs(answer, labels, self.tokenizer)
                missing = [t for t in labels if t not in got]
                if missing:
                    raise RuntimeError(f"the server returned no log-probability for label token ids {missing}")
                return [math.exp(got[t]) for t in labels], False, None
            answers = await asyncio.gather(*(self._ask(
                session, self._prompt(ids + [t], text + self._digit_text(labels, k)), max_tokens=0, echo=True,
                logprobs=0) for k, t in enumerate(labels)))
            return [math.exp(echoed_logprob(a, len(ids), t, self.tokenizer, exact_length=self.prompt_form == TEXT))
                    for a, t in zip(answers, labels)], False, None
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
                          label_ids=dict(model.label_ids or {}), top_k=options.logprobs_top,
                          chat=model.dtype == CHAT_DTYPE)
    scorer.probe()
    return scorer
