"""How to rank: one value for the raters chosen and how their ratings are fused.

`Ranking` holds the models (default: every active model), their weights θ (default:
models.weight, else the parameter count), the prompt set (default ``default``), α of the sentence
level, the token-level formula, how a conversation's turns are fused (``turns_agg``: the mean of
its turns' S_sent by default), and what is kept of the ranking: near-duplicates or repeated
prompts (`dedup`, docs/dedup.md) and at most so many samples per group (`max_per_group`,
`group_by`). It is built once at the edge (the CLI from its options, a
script by hand), checked when built, and passed down whole: `Store.rank`, `select`, `export`,
`report`, `diagnose`, `sql` and the fusion views take it. A frozen selection stores the resolved
form (`selectit.fusion.params.Params`, which carries this value) in `selections.params`.

    >>> r = Ranking(models=("smol", "gemma"), weights={"smol": 1, "gemma": 2}, alpha=0.5)
    >>> r.alpha, r.formula, r.weight_map
    (0.5, 'paper', {'smol': 1.0, 'gemma': 2.0})
    >>> Ranking.from_json(r.as_json()) == r
    True
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from selectit.contract import DEFAULT_ALPHA, DEFAULT_FORMULA, Formula, TurnsAgg, choices, valid_name

#: How a sample's turns are fused unless told (docs/method.md, "Fusion across turns").
DEFAULT_TURNS_AGG = TurnsAgg.MEAN
from selectit.errors import FusionError

#: `Ranking.dedup`'s choices, and the default similarity of near-duplicates (docs/dedup.md).
DEDUPS = ("near", "prompt")
DEFAULT_JACCARD = 0.7
_FIELD = re.compile(r"[A-Za-z0-9_.-]{1,200}")


@dataclass(frozen=True)
class Ranking:
    """The fusion's choices. Every field has the documented default; `Ranking()` is SelectIT's."""

    #: Names of active models (None: every active model). A name given twice is an error.
    models: tuple[str, ...] | None = None
    #: θ per model name, overriding models.weight / n_params; stored as (name, θ) pairs in the order given.
    weights: tuple[tuple[str, float], ...] | Mapping[str, float] | None = field(default=None)
    #: The prompt set (None: ``default``); a set that does not exist is an error when named.
    prompt_set: str | None = None
    #: α of the sentence level: mean / (1 + α·std), a number >= 0.
    alpha: float = DEFAULT_ALPHA
    #: The token-level P'_k: ``paper`` (p_k/Σp) or ``reference-code`` (softmax of it).
    formula: str = DEFAULT_FORMULA.value
    #: A sample's S_sent from its turns' (per model, before the model level): ``mean`` of every
    #: rated turn, their ``min``, or the ``last`` turn's. One turn (an Alpaca record): all the same.
    turns_agg: str = DEFAULT_TURNS_AGG.value
    #: Keep one sample per group: ``near`` (near-duplicates of the whole text, by MinHash) or
    #: ``prompt`` (the same normalised first user turn); the best-ranked one is kept. None: all.
    dedup: str | None = None
    #: With ``dedup="near"``: the estimated Jaccard similarity at which two samples are near-duplicates.
    jaccard: float = DEFAULT_JACCARD
    #: Keep at most this many samples (the best-ranked) per group of `group_by`.
    max_per_group: int | None = None
    #: ``id-prefix`` (the original id without its ``_<n>`` chunk suffix, ShareGPT's ``ZUkSe7V_0``) or a
    #: field of the ingested record (``source``, ``category``, …).
    group_by: str | None = None
    #: Walk the ranking from the top and keep a sample unless its embedding's cosine to one kept
    #: before is above τ (deita's greedy pass over `similar_pairs`; τ >= their floor, 0.8).
    diverse: float | None = None

    def __post_init__(self) -> None:
        # Normalised here, so every Ranking in the package is valid and comparable.
        set_ = object.__setattr__
        if self.models is not None:
            if not isinstance(self.models, (str, Iterable)) or any(not isinstance(m, str) for m in self.models):
                raise FusionError(f"models must be model names, e.g. ('smol', 'gemma'); got {self.models!r}")
            models = (self.models,) if isinstance(self.models, str) else tuple(self.models)
            if len(set(models)) != len(models):
                raise FusionError(f"--models names a model twice: {', '.join(models)}")
            set_(self, "models", models or None)
        set_(self, "weights", _weight_pairs(self.weights))
        if self.prompt_set is not None:  # "" is a mistake, not the default
            set_(self, "prompt_set", valid_name(self.prompt_set, "prompt set"))
        set_(self, "alpha", validate_alpha(self.alpha))
        set_(self, "formula", validate_formula(self.formula).value)
        set_(self, "turns_agg", validate_turns_agg(self.turns_agg).value)
        if self.dedup is not None and self.dedup not in DEDUPS:
            raise FusionError(f"unknown --dedup {self.dedup!r}; choose one of: {', '.join(DEDUPS)}")
        jaccard = self.jaccard
        if isinstance(jaccard, bool) or not (isinstance(jaccard, (int, float)) and 0 < jaccard <= 1):
            raise FusionError(f"--jaccard must be a similarity in (0, 1], e.g. 0.7; got {jaccard!r}")
        set_(self, "jaccard", float(jaccard))
        if self.diverse is not None:
            tau = self.diverse
            if isinstance(tau, bool) or not (isinstance(tau, (int, float)) and 0 < tau <= 1):
                raise FusionError(f"--diverse must be a cosine in (0, 1], e.g. 0.9; got {tau!r}")
            set_(self, "diverse", float(tau))
        if (self.max_per_group is None) != (self.group_by is None):
            raise FusionError("--max-per-group N and --group-by COLUMN|id-prefix go together")
        if self.max_per_group is not None:
            if isinstance(self.max_per_group, bool) or not isinstance(self.max_per_group, int) or self.max_per_group < 1:
                raise FusionError(f"--max-per-group must be a positive count; got {self.max_per_group!r}")
            if not _FIELD.fullmatch(str(self.group_by)):
                raise FusionError(f"--group-by takes id-prefix or a record field (letters, digits, _ . -); "
                                  f"got {self.group_by!r}")

    @property
    def weight_map(self) -> dict[str, float]:
        """θ per model name ({} when none is given)."""
        return dict(self.weights or ())

    def as_json(self) -> dict[str, Any]:
        """The choices as given (defaults unresolved), for a selection's params and `--format json`."""
        out: dict[str, Any] = {"models": list(self.models) if self.models else None,
                               "weights": self.weight_map or None, "prompt_set": self.prompt_set,
                               "alpha": self.alpha, "formula": self.formula, "turns_agg": self.turns_agg}
        # What is kept of the ranking: written only when chosen, so SelectIT's own params read as before.
        if self.dedup is not None:
            out |= {"dedup": self.dedup} | ({"jaccard": self.jaccard} if self.dedup == "near" else {})
        if self.max_per_group is not None:
            out |= {"max_per_group": self.max_per_group, "group_by": self.group_by}
        if self.diverse is not None:
            out |= {"diverse": self.diverse}
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Ranking:
        """The value `as_json` wrote; keys it does not know are ignored (a newer selectit's options).
        A ranking written before turns were fused (no ``turns_agg``) rated the last turn only."""
        return cls(models=raw.get("models"), weights=raw.get("weights"), prompt_set=raw.get("prompt_set"),
                   alpha=raw.get("alpha", DEFAULT_ALPHA), formula=raw.get("formula", DEFAULT_FORMULA.value),
                   turns_agg=raw.get("turns_agg", TurnsAgg.LAST.value),
                   dedup=raw.get("dedup"), jaccard=raw.get("jaccard", DEFAULT_JACCARD),
                   max_per_group=raw.get("max_per_group"), group_by=raw.get("group_by"),
                   diverse=raw.get("diverse"))

    @property
    def trims(self) -> bool:
        """Whether anything is taken out of the ranking (dedup, a per-group cap, diversity)."""
        return self.dedup is not None or self.max_per_group is not None or self.diverse is not None


def _weight_pairs(weights: Iterable[tuple[str, float]] | Mapping[str, float] | None) -> tuple[tuple[str, float], ...] | None:
    if not weights:
        return None
    pairs = list(weights.items()) if isinstance(weights, Mapping) else [tuple(p) for p in weights]
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise FusionError(f"--weights gives a model two weights: {', '.join(names)}")
    out = []
    for name, theta in pairs:
        try:
            out.append((str(name), float(theta)))
        except (TypeError, ValueError):
            raise FusionError(f"the weight θ of model {name!r} must be a number, not {theta!r}") from None
    return tuple(out)


def validate_alpha(alpha: float) -> float:
    """α of the sentence level: a number >= 0."""
    if isinstance(alpha, bool) or not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise FusionError(f"--alpha must be a number >= 0, e.g. 0.2; got {alpha!r}")
    return float(alpha)


def validate_formula(formula: str) -> Formula:
    """The token-level formula, as a `Formula`."""
    try:
        return Formula(formula)
    except ValueError:
        raise FusionError(f"unknown formula {formula!r}; choose one of: {choices(Formula)}") from None


def validate_turns_agg(turns_agg: str) -> TurnsAgg:
    """How a sample's turns are fused, as a `TurnsAgg`."""
    try:
        return TurnsAgg(turns_agg)
    except ValueError:
        raise FusionError(f"unknown --turns-agg {turns_agg!r}; choose one of: {choices(TurnsAgg)}") from None


#: SelectIT's own choices: every active model by its θ, the default prompt set, α 0.2, the paper's formula.
DEFAULT_RANKING = Ranking()
