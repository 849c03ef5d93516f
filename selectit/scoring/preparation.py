"""What every scoring engine does before and after its model runs, the same way (torch-free).

Both engines (`selectit.scoring.torch_engine.Scorer`, torch; `selectit.scoring.vllm_engine.VllmScorer`, vLLM) inherit
`RequestPreparation`, so a request is checked, tokenized and truncated identically and its
cells are built by the same rules; that is what lets cells from either engine count as the same
cell (docs/method.md §1, §3):
- the prompt is tokenized with the tokenizer's default special tokens, exactly as a separate
  forward of that prompt would be;
- a prompt longer than the model's context (`max_tokens`) first loses the oldest turns of its
  conversation's history (`RatingRequest.shorter`; the rated turn is never cut while history is
  left), then the middle of its response (head and tail kept, joined by " … "), so the rating
  question stays; the cell is `truncated`;
- a request that cannot be prepared, or whose scoring fails, yields failed cells (`probs=None`,
  `error` set); never a default score, and never another request's cells.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from selectit.contract import LABEL_CONTEXT, CellResult, RatingRequest, RenderedPrompt
from selectit.errors import SelectitError
from selectit.scoring.labels import label_token_ids

ELLIPSIS = " … "
#: Requests held prepared ahead at most (a few batches; more are dropped, oldest first).
MAX_PREPARED_AHEAD = 4096


@dataclass
class Prepared:
    """A request after tokenization: one token list per prompt (after truncation)."""

    req: RatingRequest
    ids: list[list[int]]
    truncated: bool
    texts: list[str] | None = None  # the text each token list was tokenized from (a server may need text)


class RequestPreparation:
    """Tokenization, truncation, label ids and cell building shared by the engines.

    A subclass sets `tokenizer`, `max_tokens` and calls `_init_labels(label_ids)`, which also sets
    up what `prepare` holds.
    """

    tokenizer: Any
    max_tokens: int

    def _init_labels(self, label_ids: dict[str, list[int]] | None) -> None:
        self._labels_by_context = dict(label_ids or {})  # layout → ids of "1".."9"
        self._label_cache: dict[str, list[int]] = {}
        #: id(request) → (the request, its `Prepared` or the error preparing it), from `prepare`
        self._ready: dict[int, tuple[RatingRequest, Prepared | Exception]] = {}
        # A fast tokenizer used from two threads at once fails ("Already borrowed": each call sets
        # its truncation and padding), so `prepare` on the runner's thread and `score` take turns.
        self._tokenizing = threading.Lock()

    def prepare(self, requests: Sequence[RatingRequest]) -> None:
        """Tokenize `requests` now, for a later `score` of these very objects: the runner calls it
        on another thread while the engine scores the batch before, so an accelerator never waits
        for the tokenizer between batches or jobs. `score` prepares whatever was not."""
        ready = self._ready
        for req in requests:
            try:
                with self._tokenizing:
                    done: Prepared | Exception = self._prepare(req)
            except Exception as exc:  # noqa: BLE001 - raised again where `score` meets the request
                done = exc
            ready[id(req)] = (req, done)
        while len(ready) > MAX_PREPARED_AHEAD:  # requests never scored (a job given back): oldest out
            try:
                ready.pop(next(iter(ready)), None)
            except (RuntimeError, StopIteration):  # `score` took one meanwhile, on its thread
                break

    def _prepared(self, req: RatingRequest) -> Prepared:
        """`req` prepared: by `prepare` if it was (the same object), else now."""
        ready = self._ready.pop(id(req), None)
        if ready is None or ready[0] is not req:  # an id is reused once its object is gone
            with self._tokenizing:
                return self._prepare(req)
        if isinstance(ready[1], Exception):
            raise ready[1]
        return ready[1]

    def _tokenize(self, prompts: Sequence[RenderedPrompt]) -> list[list[int]]:
        whole = [i for i, p in enumerate(prompts) if not p.segments]
        out: list[list[int]] = [[] for _ in prompts]
        if whole:
            for i, x in zip(whole, self.tokenizer([prompts[i].text for i in whole])["input_ids"]):
                out[i] = list(x)
        for i, p in enumerate(prompts):
            if p.segments:
                out[i] = self._tokenize_segments(p.segments)
        return out

    def _tokenize_segments(self, segments: Sequence[str]) -> list[int]:
        """The segments tokenized one by one and joined, inside the tokenizer's special tokens (those
        it puts around a text: found by tokenizing the first segment with and without them), so a
        conversation's turn t is a token prefix of turn t+1 (`RenderedPrompt.segments`)."""
        parts = self.tokenizer(list(segments), add_special_tokens=False)["input_ids"]
        first = list(self.tokenizer(segments[0])["input_ids"])
        bare = list(parts[0])
        at = next((i for i in range(len(first) - len(bare) + 1) if first[i:i + len(bare)] == bare), None)
        if at is None:  # a tokenizer that changes the text next to its special tokens: no sharing then
            return list(self.tokenizer("".join(segments))["input_ids"])
        return first[:at] + [t for x in parts for t in x] + first[at + len(bare):]

    def _prepare(self, req: RatingRequest) -> Prepared:
        if not 2 <= req.scale <= 9:
            raise SelectitError(f"scale {req.scale} is out of range 2..9")
        if len(req.prompts) != len(req.prompt_ids) or not req.prompts:
            raise SelectitError("a request needs one rendered prompt per prompt id")
        ids = self._tokenize(req.prompts)
        if max(map(len, ids)) <= self.max_tokens:
            return Prepared(req, ids, False, [p.text for p in req.prompts])
        prompts = req.prompts
        for drop in range(1, req.n_shorter + 1 if req.shorter else 1):  # the oldest history first
            prompts = req.shorter(drop)  # type: ignore[misc]
            ids = self._tokenize(prompts)
            if max(map(len, ids)) <= self.max_tokens:
                return Prepared(req, ids, True, [p.text for p in prompts])
        texts: list[str] = []
        return Prepared(req, self._truncate(prompts, ids, texts), True, texts)

    def _truncate(self, prompts: Sequence[RenderedPrompt], ids: list[list[int]],
                  texts: list[str] | None = None) -> list[list[int]]:
        """Cut the middle of each response until every prompt fits in max_tokens (the cut prompts'
        texts are appended to `texts`)."""
        out: list[list[int]] = []
        ellipsis_len = len(self.tokenizer(ELLIPSIS, add_special_tokens=False)["input_ids"])
        for p, x in zip(prompts, ids):
            resp = self.tokenizer(p.response, add_special_tokens=False)["input_ids"]
            excess = len(x) - self.max_tokens
            cut = p
            while excess > 0:
                keep = len(resp) - excess - ellipsis_len - 1
                if keep < 2:
                    raise SelectitError(
                        f"the prompt is longer than the model's context ({self.max_tokens} tokens) even without "
                        f"its response; raise --max-tokens on `selectit model add` or shorten the instruction"
                    )
                head, tail = keep - keep // 2, keep // 2
                text = self.tokenizer.decode(resp[:head]) + ELLIPSIS + self.tokenizer.decode(resp[len(resp) - tail:])
                cut = RenderedPrompt(p.head, text, p.tail)
                x = self._tokenize([cut])[0]
                excess = max(excess + 1, len(x) - self.max_tokens + excess) if len(x) > self.max_tokens else 0
            out.append(x)
            if texts is not None:
                texts.append(cut.text)
        return out

    def _labels(self, prompt: RenderedPrompt) -> list[int]:
        """Token ids of the digits 1..9 in the context right before this prompt's label."""
        for layout, context in LABEL_CONTEXT.items():
            if prompt.tail.endswith(context) and layout in self._labels_by_context:
                return self._labels_by_context[layout]
        if prompt.tail not in self._label_cache:  # a custom tail: derive the ids in that context
            with self._tokenizing:
                self._label_cache[prompt.tail] = label_token_ids(self.tokenizer, prompt.tail[-64:])
        return self._label_cache[prompt.tail]

    def _cell(self, prep: Prepared, k: int, probs: Sequence[float] | None, err: str | None) -> CellResult:
        """The result of prompt k of a prepared request: its K probabilities, or why it failed."""
        req = prep.req
        if err is None and probs is not None and not all(math.isfinite(float(v)) for v in probs):
            err = "the model produced non-finite probabilities (NaN or inf)"
        if err is not None or probs is None:
            return CellResult.failed(req.sample_id, req.prompt_ids[k], err or "no probabilities", len(prep.ids[k]),
                                     prep.truncated, turn=req.turn)
        p = tuple(float(v) for v in probs)
        return CellResult(req.sample_id, req.prompt_ids[k], p, math.fsum(p), len(prep.ids[k]), prep.truncated,
                          turn=req.turn)

    @staticmethod
    def _failed(req: RatingRequest, cells: Iterable[int], exc: BaseException) -> list[CellResult]:
        msg = str(exc) if isinstance(exc, SelectitError) else f"{type(exc).__name__}: {exc}"
        return [CellResult.failed(req.sample_id, req.prompt_ids[k], msg, turn=req.turn) for k in cells]
