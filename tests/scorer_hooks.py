"""A scorer hook for the job and fleet tests (`SELECTIT_SCORER=scorer_hooks:load`).

It wraps selectit's real scorer (CPU) and adds, from the environment:
- `SELECTIT_TEST_LOG`: a file where each computed cell is appended as `worker sample model prompt`
  (one O_APPEND write per batch, safe across processes), to check nothing is computed twice;
- `SELECTIT_TEST_POISON`: text; a batch holding a sample whose prompt contains it raises
  (a cell that always fails);
- `SELECTIT_TEST_DELAY`: seconds to sleep per batch, so a test can kill a process mid-job.

`SELECTIT_SCORER=scorer_hooks:instant` answers every cell at once with a fixed distribution (no
model, no torch): what is left is the bookkeeping, which the fleet benchmark measures;
`scorer_hooks:gpu` does the same after sleeping `SELECTIT_TEST_GPU_MS` ms a cell (an emulated GPU),
and with `SELECTIT_TEST_TOKENIZER=DIR` tokenizes each request first with that real tokenizer.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Sequence
from typing import Any

from selectit.contract import CellResult, RatingRequest
from selectit.jobs.leases import worker_id


class HookedScorer:
    def __init__(self, inner: Any, model_id: int) -> None:
        self.inner = inner
        self.model_id = model_id
        self.engine = getattr(inner, "engine", None)  # provenance of the rows it writes
        self.engine_version = getattr(inner, "engine_version", None)

    @property
    def forwards(self) -> int:
        return self.inner.forwards

    def score(self, requests: Sequence[RatingRequest], progress: Any = None) -> list[CellResult]:
        delay = float(os.environ.get("SELECTIT_TEST_DELAY") or 0)
        if delay:
            time.sleep(delay)
        poison = os.environ.get("SELECTIT_TEST_POISON")
        if poison and any(poison in p.text for r in requests for p in r.prompts):
            raise RuntimeError("injected failure")
        results = self.inner.score(requests, progress)
        log = os.environ.get("SELECTIT_TEST_LOG")
        if log:
            lines = "".join(f"{worker_id()} {c.sample_id} {self.model_id} {c.prompt_id}\n" for c in results)
            fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, lines.encode())
            finally:
                os.close(fd)
        return results


def load(model: Any) -> HookedScorer:
    from selectit.scoring.torch_engine import load_scorer

    return HookedScorer(load_scorer(model, device="cpu"), model.id)


class InstantScorer:
    """Every cell answered at once with the same distribution over 1..K."""

    forwards = 0

    def score(self, requests: Sequence[RatingRequest], progress: Any = None) -> list[CellResult]:
        return [CellResult(r.sample_id, p, tuple(1.0 / r.scale for _ in range(r.scale)), 1.0, 100, False)
                for r in requests for p in r.prompt_ids]


def instant(model: Any) -> InstantScorer:
    return InstantScorer()


class EmulatedGPU(InstantScorer):
    """`InstantScorer` that first sleeps `SELECTIT_TEST_GPU_MS` ms per cell, standing for a GPU
    forward (a sleep releases the GIL, as a CUDA kernel does): the fleet benchmark measures how
    much of the GPU's time the bookkeeping around it costs.

    With `SELECTIT_TEST_PHASES=DIR`, the process writes `DIR/<pid>.json` as it exits: the phases
    its selectit recorded (`selectit.timing.PHASES`) and the seconds of sleep asked and slept (a
    sleep that overshoots is a thread woken late: the CPUs are busy)."""

    asked = 0.0
    slept = 0.0

    def __init__(self) -> None:
        self.seconds_per_cell = float(os.environ.get("SELECTIT_TEST_GPU_MS") or 0) / 1000.0

    def score(self, requests: Sequence[RatingRequest], progress: Any = None) -> list[CellResult]:
        asked = self.seconds_per_cell * sum(len(r.prompt_ids) for r in requests)
        t0 = time.perf_counter()
        time.sleep(asked)
        EmulatedGPU.slept += time.perf_counter() - t0
        EmulatedGPU.asked += asked
        return super().score(requests, progress)


class TokenizingGPU(EmulatedGPU):
    """`EmulatedGPU` that first prepares each request with a real tokenizer, as an engine's `score`
    does (`SELECTIT_TEST_TOKENIZER`: a model directory), unless its `prepare` did so ahead (a
    selectit whose streams tokenize ahead calls it on another thread): the fleet benchmark's
    `--tokenize` shows whether the tokenizer's time is hidden behind the emulated GPU's."""

    def __init__(self, tokenizer_dir: str) -> None:
        super().__init__()
        from transformers import AutoTokenizer

        from selectit.scoring.preparation import RequestPreparation

        self._prep = RequestPreparation()
        self._prep.tokenizer, self._prep.max_tokens = AutoTokenizer.from_pretrained(tokenizer_dir), 2048
        self._prep._init_labels({})
        if hasattr(self._prep, "prepare"):  # a selectit without it tokenizes in `score` only
            self.prepare = self._prep.prepare

    def score(self, requests: Sequence[RatingRequest], progress: Any = None) -> list[CellResult]:
        prepared = getattr(self._prep, "_prepared", self._prep._prepare)
        for r in requests:
            prepared(r)
        return super().score(requests, progress)


def _write_phases(folder: str) -> None:
    import json

    from selectit.timing import PHASES

    with open(os.path.join(folder, f"{os.getpid()}.json"), "w", encoding="utf-8") as f:
        json.dump({"phases": PHASES, "asked": EmulatedGPU.asked, "slept": EmulatedGPU.slept}, f)


@functools.cache
def _tokenizing_gpu(tokenizer_dir: str) -> TokenizingGPU:
    return TokenizingGPU(tokenizer_dir)


def gpu(model: Any) -> EmulatedGPU:
    folder = os.environ.get("SELECTIT_TEST_PHASES")
    if folder and not getattr(gpu, "registered", False):
        import atexit

        atexit.register(_write_phases, folder)
        gpu.registered = True  # type: ignore[attr-defined]
    tokenizer = os.environ.get("SELECTIT_TEST_TOKENIZER")
    return _tokenizing_gpu(tokenizer) if tokenizer else EmulatedGPU()


class FixedScorer:
    """Every cell answered with the same decided distribution (most mass on K−1): a rater that
    rates every sample the same, for the collapse check."""

    forwards = 0

    def score(self, requests: Sequence[RatingRequest], progress: Any = None) -> list[CellResult]:
        out = []
        for r in requests:
            probs = [0.1] * r.scale
            probs[r.scale - 2] = 0.6
            out += [CellResult(r.sample_id, p, tuple(probs), sum(probs), 100, False) for p in r.prompt_ids]
        return out


def fixed(model: Any) -> FixedScorer:
    return FixedScorer()


class PerRequestScorer(InstantScorer):
    """`InstantScorer` that reports each request's cells as computed, as a real engine does."""

    def score(self, requests: Sequence[RatingRequest], progress: Any = None) -> list[CellResult]:
        out = []
        for r in requests:
            out += super().score([r])
            if progress:
                progress(len(r.prompt_ids))
        return out


def per_request(model: Any) -> PerRequestScorer:
    return PerRequestScorer()


class LengthScorer:
    """Rates a sample by the length of its prompt (so, of its response): the longer, the higher
    the label, the peak's height breaking ties within a label, so S_token grows with the length.
    A rater that only measures length, for the audit's tests."""

    forwards = 0

    def score(self, requests: Sequence[RatingRequest], progress: Any = None) -> list[CellResult]:
        import math

        out = []
        for r in requests:
            for p, prompt in zip(r.prompt_ids, r.prompts):
                f = (1 - math.exp(-len(prompt.response) / 600)) * r.scale  # in [0, K)
                label = min(r.scale - 1, int(f))  # 0-based
                peak = 0.8 + 0.1 * (f - int(f))
                probs = [(1 - peak) / (r.scale - 1)] * r.scale
                probs[label] = peak
                out.append(CellResult(r.sample_id, p, tuple(probs), 1.0, 100, False))
        return out


def by_length(model: Any) -> LengthScorer:
    return LengthScorer()


class OnePromptSaysOne(LengthScorer):
    """`LengthScorer`, except that the first prompt of the set rates every sample "1": a collapse
    that hides in the model's figures (4 prompts of 5 still separate the samples)."""

    def score(self, requests: Sequence[RatingRequest], progress: Any = None) -> list[CellResult]:
        out = super().score(requests, progress)
        first = {r.sample_id: min(r.prompt_ids) for r in requests}
        ones = lambda c: tuple([0.9] + [0.1 / (len(c.probs) - 1)] * (len(c.probs) - 1))  # noqa: E731
        return [CellResult(c.sample_id, c.prompt_id, ones(c), 1.0, 100, False) if c.prompt_id == first[c.sample_id]
                else c for c in out]


def one_prompt_says_one(model: Any) -> OnePromptSaysOne:
    return OnePromptSaysOne()


class TextualScorer:
    """Every cell answered at once with probabilities drawn from a hash of its prompt's text: no
    model, yet cells differ per sample, turn and prompt (and the same prompt gets the same cell)."""

    forwards = 0
    engine = "textual"
    engine_version = "sha256"

    def score(self, requests: Sequence[RatingRequest], progress: Any = None) -> list[CellResult]:
        import hashlib

        out = []
        for r in requests:
            for p, prompt in zip(r.prompt_ids, r.prompts):
                digest = hashlib.sha256(prompt.text.encode()).digest()
                probs = tuple(0.01 + digest[k] / 512 for k in range(r.scale))
                out.append(CellResult(r.sample_id, p, probs, sum(probs), len(prompt.text), False))
        return out


def textual(model: Any) -> TextualScorer:
    return TextualScorer()


if os.environ.get("SELECTIT_TEST_TOKENIZER"):  # loaded as the worker starts, not on its first job
    _tokenizing_gpu(os.environ["SELECTIT_TEST_TOKENIZER"])
