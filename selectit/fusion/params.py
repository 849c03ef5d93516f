"""What a fusion computes with: the chosen model versions with their weights θ, the chosen
prompt versions, α and the formula (`Params`), read from the attached store or from a
connection's `fusion_params` table."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import duckdb

from selectit.contract import TurnsAgg
from selectit.errors import NoSuchModel
from selectit.fusion.errors import FusionError
from selectit.fusion.formula_sql import TIE_RULE
from selectit.fusion.store_attach import sql_str
from selectit.ranking import Ranking
from selectit.store.schema import MAX_SCALE


@dataclass(frozen=True)
class ChosenModel:
    model_id: int
    name: str
    theta: float
    share: float


@dataclass(frozen=True)
class ChosenPrompt:
    prompt_id: int
    set_name: str
    position: int
    scale: int


@dataclass(frozen=True)
class Params:
    """A `Ranking` resolved against the store: the model and prompt versions it chose, with each
    model's θ. Its `as_json` is what a frozen selection stores in `selections.params`."""

    ranking: Ranking
    prompt_set: str  # the set's name (the ranking's, or the default)
    models: tuple[ChosenModel, ...]
    prompts: tuple[ChosenPrompt, ...]

    @property
    def alpha(self) -> float:
        return self.ranking.alpha

    @property
    def formula(self) -> str:
        return self.ranking.formula

    @property
    def every_turn(self) -> bool:
        """Whether every rated turn of a sample enters (``mean``, ``min``), or its last alone."""
        return self.ranking.turns_agg != TurnsAgg.LAST

    def as_json(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "formula": self.formula,
            "prompt_set": self.prompt_set,
            "prompts": [[p.prompt_id, p.set_name, p.position, p.scale] for p in self.prompts],
            "models": [{"id": m.model_id, "name": m.name, "theta": m.theta, "share": m.share} for m in self.models],
            "tie_rule": TIE_RULE,
            "ranking": self.ranking.as_json(),  # the choices as given, before they were resolved
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Params:
        """The parameters stored by `as_json` (e.g. in a frozen selection's params); a selection
        frozen before `ranking` was stored gets it from its resolved models and θ."""
        models = tuple(ChosenModel(m["id"], m["name"], m["theta"], m["share"]) for m in raw["models"])
        ranking = Ranking.from_json(raw["ranking"]) if raw.get("ranking") else Ranking(
            models=tuple(m.name for m in models) or None, weights={m.name: m.theta for m in models} or None,
            prompt_set=raw["prompt_set"], alpha=raw["alpha"], formula=raw["formula"], turns_agg=TurnsAgg.LAST)
        return cls(ranking, raw["prompt_set"], models, tuple(ChosenPrompt(*p) for p in raw["prompts"]))


def choose_models(con: duckdb.DuckDBPyConnection, ranking: Ranking) -> tuple[ChosenModel, ...]:
    """The active versions of the ranking's models (default: every active model), each with its θ."""
    models, weights = ranking.models, ranking.weight_map
    rows = con.execute(
        "SELECT id, name, weight, n_params FROM store.models WHERE CAST(active AS INTEGER) = 1 ORDER BY name, id"
    ).fetchall()
    active = sorted({r[1] for r in rows})
    if models:
        unknown = [m for m in models if m not in active]
        if unknown:
            raise NoSuchModel.named(unknown, active)
        rows = [r for r in rows if r[1] in set(models)]
    unknown = sorted(set(weights) - {r[1] for r in rows})
    if unknown:
        raise FusionError(
            f"--weights names {', '.join(map(repr, unknown))}, which is not among the chosen models "
            f"({', '.join(sorted({r[1] for r in rows})) or 'none'})"
        )
    thetas = []
    for model_id, name, weight, n_params in rows:
        theta = weights.get(name, weight if weight is not None else n_params)
        if theta is None and len(rows) == 1:
            theta = 1.0  # a model alone has the whole weight, whatever its θ
        if theta is None:
            raise FusionError(f"model {name!r} has no weight θ: it is served by an endpoint, whose parameter count "
                              f"is unknown. Give it one with --weights {name}=θ, or re-add it with --weight θ or "
                              f"--params N")
        theta = float(theta)
        if not math.isfinite(theta) or theta <= 0:
            raise FusionError(f"the weight θ of model {name!r} must be a positive number, not {theta!r}")
        thetas.append((model_id, name, theta))
    if not thetas:
        return ()
    # Only the ratios count: scaled by the largest θ first, the sum cannot overflow (1e308 + 1e308).
    largest = max((t for _, _, t in thetas), default=1.0)
    scaled = [t / largest for _, _, t in thetas]
    total = sum(scaled)
    if not (math.isfinite(total) and total > 0):
        raise FusionError(f"the weights θ ({', '.join(f'{n}={t!r}' for _, n, t in thetas)}) do not sum to a "
                          f"finite positive number; give weights of similar size, e.g. --weights a=1,b=2")
    return tuple(ChosenModel(i, n, t, x / total) for (i, n, t), x in zip(thetas, scaled))


def choose_prompts(con: duckdb.DuckDBPyConnection, prompt_set: str) -> tuple[ChosenPrompt, ...]:
    rows = con.execute(
        "SELECT id, set_name, position, scale FROM store.prompts "
        f"WHERE CAST(active AS INTEGER) = 1 AND set_name = {sql_str(prompt_set)} ORDER BY position, id"
    ).fetchall()
    for _, _, _, scale in rows:
        if not 2 <= scale <= MAX_SCALE:
            raise FusionError(f"prompt set {prompt_set!r} has scale {scale}; the fusion needs 2 <= K <= {MAX_SCALE}")
    return tuple(ChosenPrompt(*r) for r in rows)


def prompt_sets(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The names of the prompt sets with active prompts."""
    rows = con.execute(
        "SELECT DISTINCT set_name FROM store.prompts WHERE CAST(active AS INTEGER) = 1 ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def params_of(con: duckdb.DuckDBPyConnection) -> Params:
    """The parameters `connect()` fixed on this connection."""
    return Params.from_json(json.loads(con.execute("SELECT params::VARCHAR FROM fusion_params").fetchone()[0]))


def require_scoring_setup(con: duckdb.DuckDBPyConnection) -> Params:
    """The connection's parameters, or an error when no model or no prompt set is chosen."""
    params = params_of(con)
    if not params.prompts:
        sets = prompt_sets(con)
        raise FusionError(
            f"the prompt set {params.prompt_set!r} does not exist yet "
            f"(sets with active prompts: {', '.join(sets) or 'none'}); score the dataset first "
            f"(`selectit score`), or name an existing set with --prompt-set"
        )
    if not params.models:
        raise FusionError("no active model is registered; add one with `selectit model add` and score the dataset")
    return params
