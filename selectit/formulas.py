"""The token-level formulas of docs/method.md §5 in plain Python (no torch, no SQL).

The DuckDB views compute the same numbers in SQL; tests check both against values worked by hand.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from selectit.contract import Formula, choices


def normalized(probs: Sequence[float], formula: str = Formula.PAPER) -> list[float]:
    """P'_k from the raw label probabilities p_1..p_K."""
    total = math.fsum(probs)
    if not total > 0:
        raise ValueError("the label probabilities sum to zero")
    q = [p / total for p in probs]
    if formula == Formula.PAPER:
        return q
    if formula == Formula.REFERENCE_CODE:  # softmax over the normalized probabilities, as the authors' code
        e = [math.exp(v) for v in q]
        z = math.fsum(e)
        return [v / z for v in e]
    raise ValueError(f"unknown formula {formula!r}; choose one of: {choices(Formula)}")


def token_score(probs: Sequence[float], formula: str = Formula.PAPER) -> tuple[int, float]:
    """(S_base, S_token): S_base = argmax_k P'_k (1-based, ties → smaller k),
    S_token = S_base × 1/(K−1) × Σ_k |P'_k − P'_{S_base}|."""
    q = normalized(probs, formula)
    best = max(range(len(q)), key=lambda k: (q[k], -k))
    s_base = best + 1
    spread = math.fsum(abs(v - q[best]) for v in q)
    return s_base, s_base * spread / (len(q) - 1)
