"""The scoring engine against separate per-prompt forwards (the authors' way), on a tiny model and SmolLM2."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import DEMO_DATA as DEMO
from conftest import reference_prompt_lines
from parity import max_delta, separate
from tiny_model import build_tiny_model

from selectit.contract import RatingRequest
from selectit.scoring import registry
from selectit.scoring.registry import render
from selectit.scoring.torch_engine import ELLIPSIS, load_scorer
from selectit.store import db


def records(n: int, start: int = 0) -> list[dict]:
    """n demo records short enough for the tiny model's context (its tokenizer is not efficient)."""
    recs = json.loads(DEMO.read_text(encoding="utf-8"))
    return [r for r in recs if len(r["instruction"] + r.get("input", "") + r["output"]) < 400][start:start + n]


def templates(layout: str) -> list[str]:
    if layout == "reference":
        return reference_prompt_lines()[:5]
    return list(registry.DEFAULT_TEMPLATES)


def requests(recs: list[dict], layout: str, scale: int = 5) -> list[RatingRequest]:
    ts = templates(layout)
    return [RatingRequest(i, tuple(range(len(ts))),
                          tuple(render(layout, t, r["instruction"], r.get("input", ""), r["output"]) for t in ts), scale)
            for i, r in enumerate(recs)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_model_dir):
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 's.db'}"
    engine = db.open_store(url)
    with db.session_scope(engine) as s:
        model = registry.add_model(s, "tiny", str(tiny_model_dir), dtype="bfloat16")
    engine.dispose()
    return model


def test_load_scorer_exact_is_float32(tiny):
    scorer = load_scorer(tiny, device="cpu", exact=True)
    assert scorer.dtype == torch.float32 and scorer.model_id == tiny.id and scorer.max_tokens == 1024
    assert load_scorer(tiny, device="cpu").dtype == torch.bfloat16


def test_requests_prepared_ahead_score_as_before_without_tokenizing_again(tiny):
    """`prepare` (the runner calls it on another thread) tokenizes for a later `score` of the same
    request objects: `score` then tokenizes nothing, gives the same cells, and a request that could
    not be prepared fails there as it would have; an equal request that is another object is
    prepared anew."""
    scorer = load_scorer(tiny, device="cpu", exact=True)
    reqs = requests(records(3), "shared-context") + [RatingRequest(9, (0,), (requests(records(1), "reference")[0].prompts[0],), 12)]
    expected = scorer.score(reqs)
    scorer.prepare(reqs)
    calls = []
    tokenizer = scorer.tokenizer
    scorer.tokenizer = lambda *a, **k: (calls.append(a), tokenizer(*a, **k))[1]
    try:
        got = scorer.score(reqs)
        assert calls == [] and got == expected
        assert [c.error for c in got if c.sample_id == 9] == ["scale 12 is out of range 2..9"]
        scorer.prepare(reqs[:1])
        scorer.score([dataclasses.replace(reqs[0])])  # an equal request, not the one prepared
        assert calls
    finally:
        scorer.tokenizer = tokenizer


@pytest.mark.parametrize("layout,shared", [("shared-context", "cache"), ("shared-context", "mask"),
                                           ("reference", "cache")])
def test_packing_equals_separate_forwards(tiny, layout, shared):
    scorer = load_scorer(tiny, device="cpu", exact=True, max_batch_tokens=1 << 16, max_padding=None)
    scorer.shared = shared
    reqs = requests(records(4, 10), layout)  # ragged: four samples of different lengths
    assert len({len(r.prompts[0].text) for r in reqs}) == 4
    assert max_delta(scorer, reqs, tiny.label_ids[layout]) <= 1e-4
    if layout == "shared-context":
        # 4 samples × 5 prompts: the 4 prefixes, then the 20 suffixes on their KV cache (or one masked forward)
        assert scorer.forwards == (2 if shared == "cache" else 1)
        row = scorer._rows(0, scorer._prepare(reqs[0]))
        assert len(row) == 1 and row[0].seg.count(0) > 100  # one packed row with a long shared prefix


def test_probabilities_differ_between_prompts(tiny):
    # guards the equality tests above: a mask bug must show up as a difference far above 1e-4
    scorer = load_scorer(tiny, device="cpu", exact=True)
    cells = scorer.score(requests(records(1), "shared-context"))
    p1 = [c.probs for c in sorted(cells, key=lambda c: c.prompt_id)]
    assert max(abs(a - b) / max(a, b) for a, b in zip(p1[0], p1[1])) > 0.05


def test_truncation_keeps_the_question_and_flags(tiny):
    scorer = load_scorer(tiny, device="cpu", exact=True)
    scorer.max_tokens = 300
    rec = {"instruction": "Summarize.", "input": "", "output": "word " * 400 + "THE END."}
    short = {"instruction": "Say hi.", "input": "", "output": "Hi."}
    reqs = requests([rec, short], "shared-context")
    cells = {(c.sample_id, c.prompt_id): c for c in scorer.score(reqs)}
    for k, p in enumerate(reqs[0].prompts):
        cell = cells[(0, k)]
        assert cell.truncated and cell.error is None and cell.n_tokens <= 300
        ids = scorer._prepare(reqs[0]).ids[k]
        text = scorer.tokenizer.decode(ids, skip_special_tokens=True)
        assert text.endswith(p.tail) and ELLIPSIS in text and "THE END." in text and text.startswith(p.head)
        # the stored probabilities are those of the truncated prompt, read where the label is
        assert cell.probs == pytest.approx(separate(scorer, text, tiny.label_ids["shared-context"][:5]), abs=1e-4)
    assert not any(cells[(1, k)].truncated for k in range(5))


def test_a_failing_request_fails_only_its_cells(tiny_model_dir, tiny):
    scorer = load_scorer(tiny, device="cpu", exact=True)
    # A real NaN: poison the embedding of the end-of-sequence token, which only one sample contains.
    eos = scorer.tokenizer.eos_token_id
    with torch.no_grad():
        scorer.model.get_input_embeddings().weight[eos] = float("nan")
    recs = records(2) + [{"instruction": "Echo.", "input": "", "output": "x </s> y"}]
    reqs = requests(recs, "shared-context")
    reqs.append(RatingRequest(9, (0,), (reqs[0].prompts[0],), 12))  # an impossible scale
    cells = scorer.score(reqs)
    assert len(cells) == 16
    failed = {(c.sample_id, c.prompt_id): c.error for c in cells if c.error}
    assert set(failed) == {(2, k) for k in range(5)} | {(9, 0)}
    assert failed[(2, 0)] == "the model produced non-finite probabilities (NaN or inf)"
    assert failed[(9, 0)] == "scale 12 is out of range 2..9"
    assert all(c.probs is None and c.mass is None for c in cells if c.error)
    assert all(c.probs is not None and len(c.probs) == 5 for c in cells if not c.error)


@pytest.mark.parametrize("shared", ["cache", "mask"])
def test_sliding_window_model_packing_equals_separate_forwards(tmp_path, shared):
    # A tiny Gemma-3 (sliding-window layers, window 32): prompts far longer than the window.
    path = build_tiny_model(tmp_path / "gemma", arch="gemma3", sliding_window=32)
    engine = db.open_store(f"sqlite:///{tmp_path / 's.db'}")
    with db.session_scope(engine) as s:
        model = registry.add_model(s, "tiny-gemma", str(path), dtype="float32")
    scorer = load_scorer(model, device="cpu", exact=True, max_batch_tokens=1 << 16, max_padding=None)
    assert scorer._sliding == 32
    scorer.shared = shared
    reqs = requests(records(2, 5), "shared-context")
    assert min(len(scorer.tokenizer(r.prompts[0].text).input_ids) for r in reqs) > 100
    assert max_delta(scorer, reqs, model.label_ids["shared-context"]) <= 1e-4
    assert scorer.forwards == (2 if shared == "cache" else 1)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    engine = db.open_store(f"sqlite:///{tmp_path_factory.mktemp('smol') / 's.db'}")
    with db.session_scope(engine) as s:
        model = registry.add_model(s, "smol", "smollm2-135m", dtype="float32")
    engine.dispose()
    return model, load_scorer(model, device="cpu", exact=True, max_batch_tokens=1 << 16, max_padding=None)


@pytest.mark.slow
@pytest.mark.parametrize("layout,n", [("shared-context", 2), ("reference", 1)])
def test_smollm2_packing_equals_separate_forwards(smollm2, layout, n):
    model, scorer = smollm2
    assert model.label_ids[layout][:5] == [33, 34, 35, 36, 37] and model.n_params == 134_515_008
    reqs = requests(records(n, 3), layout)
    assert max_delta(scorer, reqs, model.label_ids[layout]) <= 1e-4


def test_out_of_memory_halves_the_batch_and_the_scores_stay_exact(tiny):
    scorer = load_scorer(tiny, device="cpu", exact=True, max_batch_tokens=1 << 16, max_padding=None)
    reqs = requests(records(4, 10), "reference")  # 20 rows of one prompt each: one batch
    raised = []

    def out_of_memory_once(_module, _args):  # noqa: ANN001, ANN202
        if not raised:
            raised.append(True)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = scorer.model.get_decoder().register_forward_pre_hook(out_of_memory_once)
    try:
        assert max_delta(scorer, reqs, tiny.label_ids["reference"]) <= 1e-4  # every cell ok and exact
    finally:
        handle.remove()
    assert raised == [True]
    assert scorer.max_batch_tokens == 1 << 15  # the budget halved for the batches that follow
    assert scorer.forwards == 2  # the failed batch of 20 rows, run again as two halves
