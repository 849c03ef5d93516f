"""The vLLM scoring engine: the same contract as `selectit.scoring.torch_engine.Scorer`, for GPU fleets.

Each cell is one vLLM request of the prompt's token ids with
`SamplingParams(max_tokens=1, logprob_token_ids=<ids of the digits 1..K>)`: vLLM returns the
full-vocabulary log-softmax at the prompt's last token, read at exactly those ids (its
`raw_logprobs`, computed from the model's own logits, so soft-caps and logit scales are kept).
`prompt_logprobs` is not used: it would turn the prefix cache off. Automatic prefix caching is on,
so the K' prompts of a sample share the sample's KV blocks (shared-context layout) and, in the
reference layout, all samples share each rating instruction's.

Everything before and after the model is `selectit.scoring.preparation`, shared with the torch engine:
the same tokenizer (the model version's own, loaded by transformers), the same truncation, the same
label ids, and the same failure rule (a failing request fails only its own cells; a batch that
raises is split until the failing cells are alone). The token ids are handed to vLLM as they are
(`TokensPrompt`), so both engines read the same tokens.

vLLM starts an engine process: a program that loads this engine must run it under
`if __name__ == "__main__":` (the `selectit` command and Celery workers do).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from selectit.contract import CellResult, RatingRequest, ScoringEngine, split_on_failure
from selectit.scoring.preparation import Prepared, RequestPreparation

if TYPE_CHECKING:  # the engine registry loads this module: no import back at run time
    from selectit.scoring.engines import VllmOptions


class VllmScorer(RequestPreparation, ScoringEngine):
    """A model loaded in vLLM that rates samples (see `selectit.contract.ScoringEngine` for the contract)."""

    engine = "vllm"

    def __init__(self, llm: Any, tokenizer: Any, *, model_id: int = 0, max_tokens: int = 2048,
                 label_ids: dict[str, list[int]] | None = None) -> None:
        import vllm

        self.llm = llm
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.max_tokens = max_tokens
        self.forwards = 0  # `generate` calls
        self.engine_version = f"vllm {vllm.__version__}"
        self._init_labels(label_ids)

    def score(self, requests: Sequence[RatingRequest],
              progress: Callable[[int], None] | None = None) -> list[CellResult]:
        """Score every (request, prompt) cell; `progress(n)` is called with cells finished."""
        results: list[CellResult] = []
        cells: list[tuple[Prepared, int, list[int]]] = []  # (request, prompt index, label ids)
        for req in requests:
            try:
                prep = self._prepared(req)
                cells += [(prep, k, self._labels(p)[: req.scale]) for k, p in enumerate(req.prompts)]
            except Exception as exc:  # noqa: BLE001 - one bad request never stops the batch
                results.extend(self._failed(req, range(len(req.prompts)), exc))
        for (prep, k, _), (probs, err) in zip(cells, self._generate(cells)):
            results.append(self._cell(prep, k, probs, err))
        if progress:
            progress(len(results))
        return results

    def close(self) -> None:
        """Stop vLLM's engine process and free its memory (the scorer is unusable after)."""
        self.llm.llm_engine.engine_core.shutdown()

    def _generate(self, cells: list[tuple[Prepared, int, list[int]]]) -> list[tuple[list[float] | None, str | None]]:
        """Label probabilities per cell; a batch that raises is split in halves down to one cell."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        def generate(batch: list[tuple[Prepared, int, list[int]]]) -> list[list[float]]:
            outputs = self.llm.generate(
                [TokensPrompt(prompt_token_ids=prep.ids[k]) for prep, k, _ in batch],
                [SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=labels, detokenize=False)
                 for _, _, labels in batch],
                use_tqdm=False)
            self.forwards += 1
            if len(outputs) != len(batch):
                raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(batch)} prompts")
            return [_label_probs(out, labels) for out, (_, _, labels) in zip(outputs, batch)]

        return [(probs, err) for _, probs, err in split_on_failure(cells, generate)]


def _label_probs(output: Any, labels: list[int]) -> list[float]:
    """exp of the log-probabilities vLLM returned for the label ids at the first generated position."""
    logprobs = output.outputs[0].logprobs
    if not logprobs:
        raise RuntimeError("vLLM returned no log-probabilities for the label tokens")
    first = logprobs[0]
    missing = [t for t in labels if t not in first]
    if missing:
        raise RuntimeError(f"vLLM returned no log-probability for label token ids {missing}")
    return [math.exp(first[t].logprob) for t in labels]


def load_vllm_scorer(model: Any, options: VllmOptions | None = None, *, dtype: str | None = None,
                     **llm_kwargs: Any) -> VllmScorer:
    """A `VllmScorer` for a model version (an `LLM` row), in its dtype unless `dtype` is given.

    vLLM's context is `options.max_model_len`, by default the version's `max_tokens` + 1 (room
    for the one generated token) capped by the model's own context; prompts are truncated to one
    token less than it, which is the version's `max_tokens` unless that is the model's whole
    context. `llm_kwargs` go to `vllm.LLM` as they are.
    """
    from selectit.scoring import loading

    if (dtype or model.dtype) == "int8":
        raise loading.ModelSourceError(f"model {model.name}: the vllm engine does not run int8 model versions "
                                       f"(torch's CPU quantisation); use --engine torch, or add the model with "
                                       f"--dtype bfloat16 for vLLM")
    from vllm import LLM as VllmLLM

    if options is None:
        from selectit.scoring.engines import VllmOptions

        options = VllmOptions()
    src = loading.resolve_source(model.source)
    expected = model.fingerprint if src.is_gguf else None
    path = loading.model_dir(src, expected)
    tokenizer = loading.load_hf_tokenizer_for_model(src, expected)
    context = int(getattr(loading.load_config(loading.Source("dir", path, str(path))),
                          "max_position_embeddings", 0) or 0)
    max_model_len = options.max_model_len or min(model.max_tokens + 1, context or model.max_tokens + 1)
    kwargs: dict[str, Any] = dict(
        model=str(path), tokenizer=str(path), dtype=dtype or model.dtype, enable_prefix_caching=True,
        max_model_len=max_model_len, tensor_parallel_size=options.tensor_parallel_size,
        pipeline_parallel_size=options.pipeline_parallel_size, seed=0)
    if options.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = options.gpu_memory_utilization
    kwargs.update(options.llm_kwargs())
    kwargs.update(llm_kwargs)
    llm = VllmLLM(**kwargs)
    return VllmScorer(llm, tokenizer, model_id=model.id, max_tokens=min(model.max_tokens, max_model_len - 1),
                      label_ids=dict(model.label_ids or {}))
