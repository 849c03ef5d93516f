"""How the raters agree with human labels (`selectit audit --labels FILE`, docs/audit.md): pairwise
accuracy on preferences, Spearman ρ on graded records, each beside a length-only baseline.

Scores are those of the fusion connection (S_model, each model's S_sent, each prompt's S_token);
a pair counts once both its samples have the score, a labelled record once it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb

COLUMNS = ("level", "model", "position", "n", "agreement", "agreement_length")


def _scores(con: duckdb.DuckDBPyConnection, ids: Sequence[int]) -> dict[tuple[str, str | None, int | None], dict[int, float]]:
    """(level, model, prompt position) → {sample id: score} for the samples `ids`."""
    listed = ", ".join(str(int(i)) for i in sorted(set(ids))) or "NULL"
    rows = con.execute(f"""
        SELECT 'fusion', NULL, NULL, sample_id, s_model FROM model_scores WHERE sample_id IN ({listed})
        UNION ALL SELECT 'model', model, NULL, sample_id, s_sent FROM sentence_scores WHERE sample_id IN ({listed})
        UNION ALL SELECT 'prompt', model, position, sample_id, s_token FROM token_scores WHERE sample_id IN ({listed})
    """).fetchall()
    out: dict[tuple[str, str | None, int | None], dict[int, float]] = {}
    for level, model, position, sid, score in rows:
        out.setdefault((level, model, position), {})[sid] = score
    return dict(sorted(out.items(), key=lambda kv: (("fusion", "model", "prompt").index(kv[0][0]),
                                                    kv[0][1] or "", kv[0][2] or 0)))


def accuracy(pairs: Sequence[tuple[float, float]]) -> float | None:
    """The share of (chosen, rejected) pairs where chosen is higher, ties counting half.

    >>> accuracy([(2, 1), (1, 2), (1, 1), (3, 0)])
    0.625
    """
    if not pairs:
        return None
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in pairs) / len(pairs)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1  # ties share their mean rank
        i = j + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman ρ (Pearson over ranks, ties sharing their mean rank); None under 3 values or for a constant side.

    >>> spearman([1, 2, 3, 4], [10, 20, 30, 25])
    0.8
    """
    if len(x) < 3:
        return None
    rx, ry = _ranks(x), _ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return None if sxx == 0 or syy == 0 else sxy / (sxx * syy) ** 0.5


@dataclass(frozen=True)
class LabelFigures:
    """Agreement with human labels per rater: `agreement` is pairwise accuracy (preferences) or
    Spearman ρ (graded records), `agreement_length` the same for response length alone."""

    dataset: str
    kind: str  # pairs | labels
    rows: list[dict[str, Any]] = field(default_factory=list)
    made: Any = None  # `selectit.io.labels.LabelSet`
    scored: list[Any] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        fused = next((r for r in self.rows if r["level"] == "fusion"), None)
        if fused is None or fused["agreement"] is None:
            return "no figures yet: score the labelled samples (selectit audit scores them unless --no-score)"
        if self.kind == "pairs":
            return (f"raters prefer the human-chosen response in {fused['agreement']:.0%} of {fused['n']} pairs "
                    f"(response length alone: {fused['agreement_length']:.0%}; chance: 50%)")
        length = "–" if fused["agreement_length"] is None else f"{fused['agreement_length']:.2f}"
        return (f"S_model follows the human labels with Spearman ρ {fused['agreement']:.2f} over {fused['n']} "
                f"records (response length alone: ρ {length})")


def figures(con: duckdb.DuckDBPyConnection, made: Any) -> LabelFigures:
    """Agreement of each rater with the labels of `made` (a `selectit.io.labels.LabelSet`)."""
    ids = [i for p in made.pairs for i in p] + [i for i, _ in made.labels]
    rows = []
    length = made.lengths
    for (level, model, position), score in _scores(con, ids).items():
        if made.pairs:
            both = [(c, r) for c, r in made.pairs if c in score and r in score]
            agreement = accuracy([(score[c], score[r]) for c, r in both])
            by_length = accuracy([(length[c], length[r]) for c, r in both])
            n = len(both)
        else:
            have = [(i, label) for i, label in made.labels if i in score]
            agreement = spearman([score[i] for i, _ in have], [label for _, label in have])
            by_length = spearman([length[i] for i, _ in have], [label for _, label in have])
            n = len(have)
        rows.append(dict(zip(COLUMNS, (level, model, position, n, agreement, by_length))))
    return LabelFigures(made.dataset, made.kind, rows)
