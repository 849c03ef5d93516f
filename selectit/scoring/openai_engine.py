"""The `openai` scoring engine: raters behind an OpenAI-compatible completions endpoint.

A model version registered with `selectit model add NAME --endpoint URL --served-model ID` is
scored by an inference server that already holds its weights (vLLM, SGLang, TGI, llama.cpp, a
hosted API); the worker needs no GPU. Everything before and after the server is
`selectit.scoring.preparation`, shared with the torch and vLLM engines: the model version's own tokenizer
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
Other 4xx answers (a prompt longer than the server's context) fail the cell at once. A deadline
(`timeout`) bounds each request whole, however slowly the server sends. Label probabilities
that are no distribution (one above 1, or more than 1 in all beyond rounding: `MASS_TOLERANCE`)
are the server's fault and fail the cell, as NaN does. The API key is read from the named
environment variable when a request is made; it is never stored, and every text from the server
reaches a message only through `endpoints.redact` (the key masked in any form, then cut).

Messages quote answers whole; the session's `redact` cuts them, after masking, where they leave
the engine (`probe`, `_cell_probs`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from selectit.contract import CellResult, RatingRequest, ScoringEngine
from selectit.scoring.endpoints import (  # noqa: F401 - re-exported: the engine's interface
    CHAT,
    EXCERPT,
    Endpoint,
    EndpointClient,
    EndpointError,
    RequestFailed,
    _Session,
    endpoint_fingerprint,
    endpoint_host,
    model_endpoint,
    normalize_endpoint,
    read_model_listing,
)
from selectit.scoring.preparation import Prepared, RequestPreparation

if TYPE_CHECKING:
    from selectit.scoring.engines import OpenAIOptions

logger = logging.getLogger(__name__)

#: How exact probabilities are read; see the module docstring.
TOKEN_IDS = "logprob_token_ids"
ECHO = "echo"
#: The chat layout (`CHAT`): the rendered prompt as one user message to /chat/completions (top-k
#: only). The dtype column of a model version registered with --chat (a completions one reads "server").
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
#: Answers that say the key is wrong: no probing goes on after them.
REFUSED = ("HTTP 401", "HTTP 403")
#: How far above 1 a cell's label probabilities may sum (float rounding of the server's log-probabilities).
MASS_TOLERANCE = 1e-3


class TokenizationMismatch(EndpointError):
    """A text-only server that splits text into other tokens than the local tokenizer."""


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
        raise RuntimeError(f"the answer has no choices[0].logprobs: {json.dumps(answer)}") from None
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
                           f"{json.dumps(answer)}") from None
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


def _distribution(probs: list[float]) -> list[float]:
    """`probs`, checked to be possible: label probabilities of one position sum to at most 1.

    A server that gives positive log-probabilities, or the same token twice in a top list, makes
    numbers no model gives; stored, they would rank as the best ratings. Non-finite values are
    left to the cell check that fails every engine's NaN.
    """
    if all(math.isfinite(p) for p in probs):
        mass = math.fsum(probs)
        if mass > 1 + MASS_TOLERANCE:
            shown = ", ".join(f"{p:.4g}" for p in probs)
            raise RuntimeError(f"the server's log-probabilities are not a distribution: label probabilities "
                               f"[{shown}] sum to {mass:.4g}, above 1 (a fault of the server, not a rating)")
    return probs


# --------------------------------------------------------------------------------------------
# The engine


class OpenAIScorer(RequestPreparation, ScoringEngine):
    """A model served behind an OpenAI-compatible endpoint that rates samples (`selectit.contract.ScoringEngine`)."""

    engine = "openai"
    #: Nothing is tokenized ahead: `score` uses the tokenizer beyond preparing (the tokenization
    #: checks), so it would meet `prepare`'s thread there, and the server's time hides the tokenizer.
    prepare = ScoringEngine.prepare

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

        async def find(session: _Session) -> str:
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
                if str(exc).startswith(REFUSED) or exc.status is None:
                    raise
            except RuntimeError:
                pass  # a server without logprob_token_ids
            answer = await self._ask(session, self._prompt(ids + [labels[0]], text + self._digit_text(labels, 0)),
                                     max_tokens=0, echo=True, logprobs=0)
            echoed_logprob(answer, len(ids), labels[0], self.tokenizer, exact_length=self.prompt_form == TEXT)
            return ECHO

        async def work(session: _Session) -> str:
            try:
                return await find(session)
            except TokenizationMismatch as exc:
                raise TokenizationMismatch(session.redact(str(exc), None)) from None
            except Exception as exc:  # noqa: BLE001 - an unreadable answer is the server's: one clear error
                raise self._probe_error(exc, session) from exc

        self.method = self.client.run(work)
        return self.method

    def _probe_error(self, exc: Exception, session: _Session) -> EndpointError:
        """Why the probe found no way to read this server's probabilities (the server's text redacted)."""
        host, served = self.client.endpoint.host, self.client.endpoint.served_model
        reason = str(exc) if isinstance(exc, (RequestFailed, RuntimeError)) else f"{type(exc).__name__}: {exc}"
        reason = session.redact(reason, EXCERPT)
        if reason.startswith(REFUSED):
            return EndpointError(f"{host} refused the request ({reason}); check the API key "
                                 f"(${self.client.endpoint.api_key_env or 'none given: --api-key-env'})")
        if isinstance(exc, RequestFailed) and exc.status is None:  # no answer: nothing to say of its logprobs
            return EndpointError(f"{host} ({served}) did not answer the probe: {reason}")
        if self.chat:
            return EndpointError(f"{host} ({served}) gives no top log-probabilities on /chat/completions: {reason}")
        if self.top_k:
            return EndpointError(f"{host} ({served}) gives no top log-probabilities: {reason}")
        return EndpointError(
            f"{host} ({served}) gives neither the log-probabilities of chosen tokens nor echoed prompt "
            f"log-probabilities ({reason}); use --logprobs-top K (labels outside the top K count as 0)")

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
                prep = self._prepared(req)
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
        """(label probabilities, partial, error) of one cell; never raises. The error quotes the
        server through `session.redact`."""
        host = self.client.endpoint.host
        try:
            probs, partial = await self._read_cell(session, ids, text, labels)
            return _distribution(probs), partial, None
        except RequestFailed as exc:
            return None, False, session.redact(f"{host}: {exc}", 2 * EXCERPT)
        except Exception as exc:  # noqa: BLE001 - an unreadable answer fails only its cell
            return None, False, session.redact(f"{host}: {type(exc).__name__}: {exc}", 2 * EXCERPT)

    async def _read_cell(self, session: _Session, ids: list[int], text: str,
                         labels: list[int]) -> tuple[list[float], bool]:
        """(label probabilities, partial) of one cell as the server gives them, in this engine's mode."""
        if self.chat:
            got = chat_digit_logprobs(await session.post("/chat/completions", self._chat_body(text)))
            digits = [str(k + 1) for k in range(len(labels))]
            return ([math.exp(got[d]) if d in got else 0.0 for d in digits],
                    any(d not in got for d in digits))
        prompt = self._prompt(ids, text)
        if self.top_k:
            answer = await self._ask(session, prompt, max_tokens=1, logprobs=self.top_k)
            self._check_count(answer, ids)
            got = first_position_logprobs(answer, labels, self.tokenizer)
            return [math.exp(got[t]) if t in got else 0.0 for t in labels], any(t not in got for t in labels)
        if self.method == TOKEN_IDS:
            answer = await self._ask(session, prompt, max_tokens=1, logprobs=1, logprob_token_ids=labels)
            self._check_count(answer, ids)
            got = first_position_logprobs(answer, labels, self.tokenizer)
            missing = [t for t in labels if t not in got]
            if missing:
                raise RuntimeError(f"the server returned no log-probability for label token ids {missing}")
            return [math.exp(got[t]) for t in labels], False
        answers = await asyncio.gather(*(self._ask(
            session, self._prompt(ids + [t], text + self._digit_text(labels, k)), max_tokens=0, echo=True,
            logprobs=0) for k, t in enumerate(labels)))
        return [math.exp(echoed_logprob(a, len(ids), t, self.tokenizer, exact_length=self.prompt_form == TEXT))
                for a, t in zip(answers, labels)], False


# --------------------------------------------------------------------------------------------
# Registration and loading


def load_openai_scorer(model: Any, options: OpenAIOptions | None = None, **client_kwargs: Any) -> OpenAIScorer:
    """An `OpenAIScorer` for a model version registered with `--endpoint` (a `ModelSpec` or a
    `models` row), with the engine options' concurrency, timeout, retries and `--logprobs-top`;
    the server is probed now, so a wrong key or an unusable server fails before a job is claimed."""
    from selectit.scoring import loading
    from selectit.scoring.engines import OpenAIOptions

    options = options or OpenAIOptions()
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
