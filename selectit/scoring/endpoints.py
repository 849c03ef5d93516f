"""Where an OpenAI-compatible server lives and how requests reach it: the endpoint (base URL,
served model id, the environment variable holding its API key), its fingerprint, and an async HTTP
client with bounded concurrency, retries with backoff and a deadline on each request. The
`openai` engine (`selectit.scoring.openai_engine`) scores through it.

Whatever a server sends (an answer, an error body, a message quoting either) may hold the API
key: a server that echoes the request headers puts it there. Every such text goes through
`redact`, which masks the key in each form it could take and only then cuts the text, so no
message, log line or database row holds any part of it. Answers are masked as they arrive.

    >>> normalize_endpoint("http://127.0.0.1:8000")
    'http://127.0.0.1:8000/v1'
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import html
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit, urlunsplit

from selectit.errors import SelectitError
from selectit.settings import environment

#: The chat layout's mark in a model version's fingerprint (`--chat`).
CHAT = "chat"
#: `/v1/models` fields that change from one call to the next on some servers (left out of the fingerprint).
VOLATILE_MODEL_FIELDS = ("created", "permission")
#: Answers worth another try: rate limits, overload, server errors.
RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: What the API key is replaced by in any text a server sent.
MASK = "***"
#: The most characters of a server's text kept in a message (after masking).
EXCERPT = 500


class EndpointError(SelectitError):
    """An endpoint that cannot be used as registered, or a request that failed for good."""


# --------------------------------------------------------------------------------------------
# The API key in a server's text


def redact(text: str, key: str | None, limit: int | None = None) -> str:
    r"""`text` (from a server, or quoting one) with `key` masked, then cut to `limit` characters.

    The key is masked raw and as `repr()`, JSON, URL and HTML escaping write it, and as each of
    those writes the others (a JSON body quoted with `!r`). Masking comes first: a cut through the
    middle of the key would leave its start, which no mask matches any more.

        >>> redact("401: bad header 'Bearer sk-1\\'2' " + "x" * 40, "sk-1'2", limit=30)
        "401: bad header 'Bearer ***' …"
    """
    if key:
        text = _key_pattern(key).sub(MASK, text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


#: The ways a server or a message can write a string: Python's escapes (repr, and ascii as
#: unicode_escape gives it, with either quote escaped), JSON (also with `\/`), URL encoding
#: (upper- and lower-case hex, `+` for space) and HTML.
_ENCODINGS: tuple[Callable[[str], str], ...] = (
    lambda s: repr(s)[1:-1],
    lambda s: s.encode("unicode_escape").decode("ascii"),
    lambda s: s.encode("unicode_escape").decode("ascii").replace("'", "\\'"),
    lambda s: s.encode("unicode_escape").decode("ascii").replace('"', '\\"'),
    lambda s: json.dumps(s)[1:-1],
    lambda s: json.dumps(s, ensure_ascii=False)[1:-1],
    lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    lambda s: quote(s, safe=""),
    lambda s: quote(s),
    lambda s: quote_plus(s),
    lambda s: html.escape(s),
)


@functools.lru_cache(maxsize=4)
def _key_pattern(key: str) -> re.Pattern[str]:
    """One regular expression for every form of `key`: raw, each encoding, and each encoding of those."""
    forms = {key}
    for _ in range(2):
        forms |= {encode(f) for f in forms for encode in _ENCODINGS}
    forms |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), f) for f in forms}
    # The longest first: a form that holds a shorter one is masked whole.
    return re.compile("|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True)))


def _redact_json(value: Any, key: str | None) -> Any:
    """A parsed answer with the key masked in every string (keys of objects included)."""
    if not key:
        return value
    if isinstance(value, str):
        return redact(value, key)
    if isinstance(value, list):
        return [_redact_json(v, key) for v in value]
    if isinstance(value, dict):
        return {redact(str(k), key): _redact_json(v, key) for k, v in value.items()}
    return value

# --------------------------------------------------------------------------------------------
# Endpoints


def normalize_endpoint(url: str) -> str:
    """The base URL of the OpenAI-compatible API: `/v1` added when no path is given.

    >>> normalize_endpoint("http://127.0.0.1:8000")
    'http://127.0.0.1:8000/v1'
    >>> normalize_endpoint("https://api.example.com/v1/")
    'https://api.example.com/v1'
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port  # raises for a port out of 0..65535 or not a number
    except ValueError as exc:  # a malformed IPv6 host ("[::1"), a port "99999" or "ab"
        raise EndpointError(f"--endpoint {url!r} is not a valid URL ({exc}); give e.g. "
                            f"http://127.0.0.1:8000/v1") from None
    if port == 0:
        raise EndpointError(f"--endpoint {url!r} has port 0, which no server listens on; give the server's port")
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
        key = environment(self.api_key_env)
        if not key:
            raise EndpointError(f"${self.api_key_env} is not set; the model's endpoint needs its API key there "
                                f"(registered with --api-key-env {self.api_key_env})")
        return key


# --------------------------------------------------------------------------------------------
# The HTTP client


class RequestFailed(Exception):
    """A request that failed for good; `str()` is the server's message (with the key masked).

    `status` is the HTTP status of the last answer, None when none came (a timeout, a broken
    connection).
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class EndpointClient:
    """Async POST/GET of JSON with bounded concurrency, retries and a deadline on each request."""

    def __init__(self, endpoint: Endpoint, *, concurrency: int = 32, timeout: float = 60.0, max_retries: int = 8,
                 backoff: float = 0.5, max_backoff: float = 30.0) -> None:
        self.endpoint = endpoint
        self.concurrency = concurrency
        self.timeout = timeout  # seconds for a whole request, answer read to its end
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

    def redact(self, text: str, limit: int | None = EXCERPT) -> str:
        """`redact` with this session's key: for any message that quotes what the server sent."""
        return redact(text, self.key, limit)

    async def get(self, path: str) -> dict[str, Any]:
        return await self._send("GET", path, None)

    async def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._send("POST", path, body)

    async def post_url(self, url: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST to a full URL on the endpoint's server (e.g. vLLM's `/tokenize` beside `/v1`)."""
        return await self._send("POST", "", body, url=url)

    async def _send(self, method: str, path: str, body: dict[str, Any] | None,
                    url: str | None = None) -> dict[str, Any]:
        """The answer (a JSON object, the key masked in its strings), retried as the module says."""
        import httpx

        c = self.client
        url = url or c.endpoint.url + path
        last, status = "no answer", None
        for attempt in range(c.max_retries + 1):
            wait: float | None = None
            async with self.gate:
                c.requests += 1
                try:
                    # httpx's timeout bounds each read, so a server that drips a byte at a time never
                    # trips it: the deadline is on the whole request, answer included.
                    resp = await asyncio.wait_for(self.http.request(method, url, json=body), c.timeout)
                except (asyncio.TimeoutError, httpx.TimeoutException):
                    last, status = f"no answer from {c.endpoint.host} within {c.timeout:g} s", None
                except httpx.TransportError as exc:
                    last, status = f"{type(exc).__name__}: {exc}", None
                else:
                    status = resp.status_code
                    if resp.status_code == 200:
                        try:
                            data = resp.json()
                        except ValueError:
                            data = None
                        if isinstance(data, dict):
                            return _redact_json(data, self.key)
                        last = f"the server answered 200 with no JSON object: {self.redact(resp.text, 300)!r}"
                    else:
                        last = f"HTTP {resp.status_code}: {_server_message(resp, self.key)}"
                        if resp.status_code not in RETRY_STATUS:
                            raise RequestFailed(self.redact(last, 2 * EXCERPT), status)
                        wait = _retry_after(resp)
            if attempt == c.max_retries:
                break
            c.retries += 1
            delay = min(c.max_backoff, c.backoff * 2 ** attempt) * (0.5 + random.random() / 2)
            await asyncio.sleep(min(c.max_backoff, wait) if wait is not None else delay)
        raise RequestFailed(self.redact(last, 2 * EXCERPT) + f" (after {c.max_retries + 1} tries)", status)


def _server_message(resp: Any, key: str | None) -> str:
    """The error message in an OpenAI-style error body, else the body: whole, for `redact` to cut.

    The body's strings are masked as parsed, before `json.dumps` escapes them once more than the
    server did.
    """
    try:
        data = _redact_json(resp.json(), key)
    except ValueError:
        return redact(resp.text.strip(), key) or resp.reason_phrase
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail")
            if msg:
                return str(msg)
        elif isinstance(err, str):
            return err
        if isinstance(data.get("detail"), str):
            return data["detail"]
    return json.dumps(data)


def _retry_after(resp: Any) -> float | None:
    try:
        return max(0.0, float(resp.headers.get("retry-after", "")))
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Registration


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
    ids = redact(", ".join(repr(e.get("id")) for e in entries if isinstance(e, dict)), endpoint.api_key(),
                 EXCERPT) or "none"
    raise EndpointError(f"{endpoint.host} does not serve a model {endpoint.served_model!r} (it serves: {ids}); "
                        f"give one of those with --served-model")


def model_endpoint(model: Any) -> Endpoint:
    """The endpoint of a model version (an `LLM` row with `endpoint` set)."""
    if not getattr(model, "endpoint", None):
        raise EndpointError(f"model {model.name!r} is not served by an endpoint; register it with "
                            f"`selectit model add {model.name} --endpoint URL --served-model ID`, or score it "
                            f"with --engine torch or vllm")
    return Endpoint(model.endpoint, model.served_model, model.api_key_env)
