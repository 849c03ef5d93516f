"""The one parity check of the scoring engines: their cells against separate per-prompt forwards.

`separate` is the authors' way (one forward of the whole prompt, full logits, softmax at the last
position); `max_delta` scores requests with an engine and compares every cell with it;
`cell_delta` compares two engines' cells (torch against vLLM or a server). Used by
tests/scoring/test_torch_engine.py (the tiny model and SmolLM2, relative and absolute error) and
tests/scoring/test_architectures.py (random-weight models of every architecture, absolute error only:
their probabilities are tiny).
"""

from __future__ import annotations

import pytest
import torch

from selectit.contract import CellResult, RatingRequest
from selectit.scoring.torch_engine import Scorer


@torch.inference_mode()
def separate(scorer: Scorer, text: str, labels: list[int]) -> list[float]:
    """The authors' way: one forward of the whole prompt, full logits, softmax at the last position."""
    ids = scorer.tokenizer(text, return_tensors="pt").input_ids
    probs = scorer.model(ids).logits[0, -1].float().softmax(-1)
    return probs[labels].tolist()


@torch.inference_mode()
def separate_ids(scorer: Scorer, ids: list[int], labels: list[int]) -> list[float]:
    """One forward of these tokens, full logits, softmax at the last position."""
    probs = scorer.model(torch.tensor([ids])).logits[0, -1].float().softmax(-1)
    return probs[labels].tolist()


def turns_delta(scorer: Scorer, reqs: list[RatingRequest]) -> float:
    """Largest |Δp| between the engine's cells of several turns (scored together) and one
    separate forward per (turn, prompt) of the very tokens the engine read for it."""
    cells = {(c.sample_id, c.turn, c.prompt_id): c for c in scorer.score(reqs)}
    assert len(cells) == sum(len(r.prompts) for r in reqs)
    worst = 0.0
    for r in reqs:
        prep = scorer._prepare(r)
        for pid, p, ids in zip(r.prompt_ids, r.prompts, prep.ids):
            cell = cells[(r.sample_id, r.turn, pid)]
            assert cell.ok and cell.n_tokens == len(ids), cell.error
            expected = separate_ids(scorer, ids, scorer._labels(p)[: r.scale])
            worst = max(worst, *(abs(a - b) for a, b in zip(cell.probs, expected)))
    return worst


def max_delta(scorer: Scorer, reqs: list[RatingRequest], label_ids: list[int] | None = None, *,
              rel: float | None = 1e-4) -> float:
    """Largest |Δp| between the engine's cells and one separate forward per prompt.

    `label_ids`: the label tokens (default: the scorer's own for each prompt). `rel`: each
    probability must also agree to this relative error (the tiny model's probabilities are
    small, so compare log p as well); None checks the absolute error only.
    """
    results = {(c.sample_id, c.prompt_id): c for c in scorer.score(reqs)}
    assert len(results) == sum(len(r.prompts) for r in reqs)
    worst = 0.0
    for r in reqs:
        for pid, p in zip(r.prompt_ids, r.prompts):
            cell = results[(r.sample_id, pid)]
            assert cell.error is None and not cell.truncated, cell.error
            labels = (label_ids if label_ids is not None else scorer._labels(p))[: r.scale]
            expected = separate(scorer, p.text, labels)
            assert cell.mass == pytest.approx(sum(cell.probs))
            for a, b in zip(cell.probs, expected):
                assert rel is None or abs(a - b) <= rel * b + 1e-9
                worst = max(worst, abs(a - b))
    return worst


def by_cell(cells: list[CellResult]) -> dict[tuple[int, int], CellResult]:
    return {(c.sample_id, c.prompt_id): c for c in cells}


def cell_delta(expected: list[CellResult], got: list[CellResult]) -> float:
    """The largest |Δp| between two engines' cells; both must score every cell alike otherwise
    (ok, same tokens read, same truncation, same number of labels)."""
    a, b = by_cell(expected), by_cell(got)
    assert a.keys() == b.keys()
    worst = 0.0
    for key in a:
        x, y = a[key], b[key]
        assert x.ok and y.ok, (x.error, y.error)
        assert (x.n_tokens, x.truncated) == (y.n_tokens, y.truncated)
        assert len(x.probs) == len(y.probs)
        worst = max(worst, *(abs(p - q) for p, q in zip(x.probs, y.probs)))
    return worst
