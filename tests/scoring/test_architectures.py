"""The torch engine on every common causal-LM architecture: packed and unpacked scoring against
separate forwards, `softmax(model(ids).logits[:, -1])`, to 1e-5 in float32.

Each architecture is a tiny random model built offline from its config (2 layers, hidden 32) with
the tiny BPE tokenizer. The ones that post-process their logits (Gemma-3's soft-cap, Granite's
`logits_scaling`, Cohere's `logit_scale`) are why the engine calls the model's own forward; the
sliding-window ones (Gemma-3 and Qwen2 per layer type, Mistral and Phi-3 on every layer, window 32)
get prompts several windows long.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from parity import max_delta, turns_delta
from test_torch_engine import records, requests
from tiny_model import build_tokenizer

from selectit.cli import main
from selectit.contract import RatingRequest, rated_turns, render, render_transcript
from selectit.scoring import registry
from selectit.scoring.torch_engine import Scorer, load_scorer
from selectit.store import db
from selectit.store.schema import LLM

WINDOW = 32
COMMON = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=1024, initializer_range=0.5)


def _config(arch: str, tok):
    import transformers as tf

    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    if arch == "llama":
        return tf.LlamaConfig(**COMMON, **ids)
    if arch == "qwen2":  # layer 0 full attention, layer 1 sliding
        return tf.Qwen2Config(**COMMON, **ids, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)
    if arch == "qwen3":
        return tf.Qwen3Config(**COMMON, **ids, head_dim=8)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**{**COMMON, "num_hidden_layers": 3}, **ids, head_dim=8, query_pre_attn_scalar=8,
                                   sliding_window=WINDOW, final_logit_softcapping=3.0,
                                   layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    if arch == "granite":
        return tf.GraniteConfig(**COMMON, **ids, logits_scaling=4.0, embedding_multiplier=2.0,
                                residual_multiplier=0.5, attention_multiplier=0.25)
    if arch == "cohere":
        return tf.CohereConfig(**COMMON, **ids, logit_scale=0.25)
    if arch == "phi3":
        return tf.Phi3Config(**COMMON, **ids, sliding_window=WINDOW)
    if arch == "mistral":
        return tf.MistralConfig(**COMMON, **ids, sliding_window=WINDOW)
    raise ValueError(arch)


#: Rating lines in the authors' style, for the reference layout (the suite needs no shared data here).
REFERENCE_LINES = ["Rate how well the response follows the instruction, from 1 to 5.\n",
                   "Is the response accurate? Answer with a score from 1 to 5.\n",
                   "Score the helpfulness of the response (1 = poor, 5 = excellent).\n"]


def reference_requests(recs: list[dict]) -> list[RatingRequest]:
    """The reference layout: short shared prefixes, so one row per prompt (no packing)."""
    return [RatingRequest(i, tuple(range(len(REFERENCE_LINES))),
                          tuple(render("reference", t, r["instruction"], r.get("input", ""), r["output"])
                                for t in REFERENCE_LINES), 5) for i, r in enumerate(recs)]


ARCHS = ["llama", "qwen2", "qwen3", "gemma3", "granite", "cohere", "phi3", "mistral"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def build(arch: str, tok, path: Path | None = None):
    """A tiny random `arch` model in float32 (saved with the tokenizer under `path` if given)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(arch, tok), dtype=torch.float32, attn_implementation="sdpa")
    if path is not None:
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return model.eval()


@pytest.mark.parametrize("packing", ["cache", "mask"])
@pytest.mark.parametrize("arch", ARCHS)
def test_packed_and_unpacked_scoring_equal_separate_forwards(arch, packing, tokenizer):
    model = build(arch, tokenizer)
    scorer = Scorer(model, tokenizer, exact=True, max_batch_tokens=1 << 16, max_padding=None)
    assert scorer.shared == "mask"  # a CPU's default; an accelerator's is the KV cache
    scorer.shared = packing
    assert scorer._sliding == (None if arch in ("llama", "qwen3", "granite", "cohere") else WINDOW)
    # shared-context: one packed row per sample, all samples in one batch;
    # the prompts are several sliding windows long
    shared = requests(records(2, 5), "shared-context", scale=9)
    assert min(len(tokenizer(r.prompts[0].text).input_ids) for r in shared) > 3 * WINDOW
    assert len(scorer._rows(0, scorer._prepare(shared[0]))) == 1
    assert max_delta(scorer, shared, rel=None) <= 1e-5
    # KV cache: the prefixes, then the suffixes on it; 4-D mask: one forward of the packed rows
    assert scorer.forwards == (2 if packing == "cache" else 1)
    # reference: one row per prompt, ragged, right-padded with a plain padding mask
    reference = reference_requests(records(2, 5))
    assert len(scorer._rows(0, scorer._prepare(reference[0]))) == len(reference[0].prompts)
    assert max_delta(scorer, reference, rel=None) <= 1e-5
    # both in one batch: unpacked rows under the 4-D mask too
    assert max_delta(scorer, shared[:1] + reference[1:], rel=None) <= 1e-5


@pytest.mark.parametrize("arch", ["granite", "cohere"])
def test_logit_processing_models_registered_with_the_cli(arch, tokenizer, tmp_path):
    # `selectit model add` accepts them: their cells must be the probabilities model(ids).logits give
    path = tmp_path / arch
    build(arch, tokenizer, path)
    url = f"sqlite:///{tmp_path / 's.db'}"
    out = CliRunner().invoke(main, ["--db", url, "model", "add", f"tiny-{arch}", "--source", str(path),
                                    "--dtype", "float32"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    engine = db.open_store(url)
    with db.session_scope(engine) as s:
        model = s.query(LLM).filter_by(name=f"tiny-{arch}").one()
        s.expunge(model)
    engine.dispose()
    scorer = load_scorer(model, device="cpu", exact=True)
    assert max_delta(scorer, requests(records(2, 7), "shared-context"), rel=None) <= 1e-5
    assert max_delta(scorer, reference_requests(records(1, 9)), rel=None) <= 1e-5


@pytest.mark.parametrize("arch", ["granite", "gemma3"])
def test_one_list_of_positions_for_older_transformers(arch, tokenizer):
    # transformers before per-row logits_to_keep (the vLLM environment's 5.19): one 1-D list of positions
    scorer = Scorer(build(arch, tokenizer), tokenizer, exact=True, max_batch_tokens=1 << 16, max_padding=None)
    scorer._keep_per_row = False
    reqs = requests(records(2, 5), "shared-context")
    assert max_delta(scorer, reqs[:1] + reference_requests(records(2, 5))[1:], rel=None) <= 1e-5


def conversation_requests(recs: list[dict], sample_id: int = 0) -> list[RatingRequest]:
    """Every rated turn of one conversation made of `recs` (a user turn and its reply each), in
    the shared-context transcript rendering: turn t's tokens are a prefix of turn t+1's."""
    turns = [("system", "Be helpful.")] + [x for r in recs for x in (("user", r["instruction"]),
                                                                  ("assistant", r["output"]))]
    ts = list(registry.DEFAULT_TEMPLATES)
    return [RatingRequest(sample_id, tuple(range(len(ts))), tuple(render_transcript(t, turns, turn) for t in ts), 5,
                          turn=turn) for turn in range(len(rated_turns(turns)))]


@pytest.mark.parametrize("packing", ["cache", "mask"])
@pytest.mark.parametrize("arch", ARCHS)
def test_all_turns_of_a_conversation_in_one_pass_equal_separate_forwards(arch, packing, tokenizer):
    scorer = Scorer(build(arch, tokenizer), tokenizer, exact=True, max_batch_tokens=1 << 16, max_padding=None)
    scorer.shared = packing
    scorer._cost = lambda n: n  # tokens only: hidden 32 makes attention dominate, and packing would lose
    turns = conversation_requests(records(3, 20)) + conversation_requests(records(2, 40), sample_id=1)
    prep = [scorer._prepare(r) for r in turns[:3]]
    for later, earlier in zip(prep, prep[1:]):  # turn t's transcript is a token prefix of turn t+1's
        transcript = len(tokenizer(earlier.req.prompts[0].head + earlier.req.prompts[0].response).input_ids)
        assert later.ids[0][:transcript - 2] == earlier.ids[0][:transcript - 2]
    (row,) = scorer._rows_of([(i, p) for i, p in enumerate(prep)])  # one row: the conversation once
    last = prep[0].req.prompts[0]
    assert row.prefix >= len(tokenizer(last.head + last.response).input_ids) - 2 and len(row.cells) == 15
    assert len(row.tokens) < sum(len(r.tokens) for i, p in enumerate(prep) for r in scorer._rows_of([(i, p)]))
    assert max(len(x) for p in prep for x in p.ids) > 3 * WINDOW
    assert turns_delta(scorer, turns) <= 1e-5
    assert scorer.forwards == (2 if packing == "cache" else 1)  # both conversations, all turns
