"""`selectit.ranking`: one value for how to rank, checked when built, passed down whole."""

from __future__ import annotations

import ast
import math

import pytest
from conftest import ROOT

from selectit.errors import SelectitError
from selectit.fusion.params import ChosenModel, ChosenPrompt, Params
from selectit.ranking import DEFAULT_RANKING, Ranking

#: The fusion's knobs: a signature holding two of them passes "how to rank" as loose parameters.
KNOBS = {"alpha", "formula", "weights", "models", "prompt_set", "turns_agg"}


def test_defaults_are_selectits() -> None:
    assert DEFAULT_RANKING == Ranking() == Ranking(alpha=0.2, formula="paper")
    assert (DEFAULT_RANKING.models, DEFAULT_RANKING.weights, DEFAULT_RANKING.prompt_set) == (None, None, None)


def test_built_values_are_normalised_and_compare_equal() -> None:
    a = Ranking(models=["smol", "gemma"], weights={"smol": 1, "gemma": 2}, alpha=1)
    b = Ranking(models=("smol", "gemma"), weights=[("smol", 1.0), ("gemma", 2.0)], alpha=1.0)
    assert a == b and a.models == ("smol", "gemma") and a.weight_map == {"smol": 1.0, "gemma": 2.0}
    assert Ranking(models=[]).models is None and Ranking(weights={}).weights is None


@pytest.mark.parametrize(("kwargs", "phrase"), [
    ({"alpha": -0.1}, "--alpha must be a number >= 0"),
    ({"alpha": math.nan}, "--alpha must be a number >= 0"),
    ({"alpha": True}, "--alpha must be a number >= 0"),
    ({"formula": "mean"}, "unknown formula 'mean'; choose one of: paper, reference-code"),
    ({"models": ["a", "a"]}, "--models names a model twice"),
    ({"weights": [("a", 1), ("a", 2)]}, "--weights gives a model two weights"),
    ({"weights": {"a": "heavy"}}, "the weight θ of model 'a' must be a number"),
    ({"prompt_set": ""}, "prompt set name is empty"),
    ({"models": 5}, "models must be model names"),
    ({"turns_agg": "max"}, "unknown --turns-agg 'max'; choose one of: last, mean, min"),
])
def test_a_bad_choice_fails_when_the_value_is_built(kwargs: dict, phrase: str) -> None:
    with pytest.raises(SelectitError, match=phrase):
        Ranking(**kwargs)


def test_the_api_refuses_a_ranking_for_a_frozen_selection_and_a_value_that_is_not_one(tmp_path) -> None:
    import selectit

    with selectit.open(tmp_path / "s.db") as store:
        with pytest.raises(SelectitError, match="--selection top is frozen with its own models"):
            store.export(tmp_path / "x.json", selection="top", ranking=Ranking(alpha=0.5))
        with pytest.raises(SelectitError, match="ranking must be a selectit.Ranking, e.g. Ranking"):
            store.rank("d", ranking={"alpha": 0.5})


def test_json_round_trip_and_unknown_keys_of_a_newer_selectit() -> None:
    r = Ranking(models=("b", "a"), weights={"a": 2}, prompt_set="s", alpha=0.5, formula="reference-code",
                turns_agg="min")
    raw = r.as_json()
    assert raw == {"models": ["b", "a"], "weights": {"a": 2.0}, "prompt_set": "s", "alpha": 0.5,
                   "formula": "reference-code", "turns_agg": "min"}
    assert Ranking.from_json(raw) == r
    assert Ranking.from_json(raw | {"tokens_agg": "minhash"}) == r
    # a ranking stored before turns were fused ranked the last turns
    assert Ranking.from_json({"alpha": 0.5}).turns_agg == "last" and Ranking().turns_agg == "mean"


def test_a_selection_frozen_before_the_ranking_was_stored_reads_back_with_its_resolved_choices() -> None:
    old = {"alpha": 0.3, "formula": "paper", "prompt_set": "s", "prompts": [[7, "s", 0, 5]],
           "models": [{"id": 1, "name": "a", "theta": 135.0, "share": 1.0}], "tie_rule": "x"}
    params = Params.from_json(old)
    assert params.ranking == Ranking(models=("a",), weights={"a": 135.0}, prompt_set="s", alpha=0.3,
                                     turns_agg="last")
    assert (params.alpha, params.formula, params.prompts) == (0.3, "paper", (ChosenPrompt(7, "s", 0, 5),))
    new = Params(Ranking(alpha=0.3), "s", (ChosenModel(1, "a", 135.0, 1.0),), params.prompts).as_json()
    assert new["ranking"] == Ranking(alpha=0.3).as_json() and new["alpha"] == 0.3
    assert Params.from_json(new).ranking == Ranking(alpha=0.3)


def _functions(tree: ast.AST):  # noqa: ANN202
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            names = {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]}
            yield node, names


def test_no_function_of_the_package_passes_the_fusion_knobs_loose() -> None:
    """"How to rank" travels as one `Ranking`: no signature holds two of its knobs (the CLI's
    option collector, which builds the value, is the one place they arrive loose)."""
    allowed = {("selectit/cli/options.py", "with_ranking"), ("selectit/cli/options.py", "_ranking")}
    loose = []
    for path in sorted([*(ROOT / "selectit").rglob("*.py"), *(ROOT / "workers").rglob("*.py")]):
        rel = str(path.relative_to(ROOT))
        for node, names in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            if len(names & KNOBS) >= 2 and (rel, node.name) not in allowed:
                loose.append(f"{rel}:{node.lineno} {node.name}({', '.join(sorted(names & KNOBS))})")
    assert not loose, f"pass a selectit.Ranking instead: {loose}"


def test_the_check_above_sees_a_loose_signature() -> None:
    tree = ast.parse("def rank(dataset, *, alpha=0.2, formula='paper'): ...")
    assert [len(names & KNOBS) for _, names in _functions(tree)] == [2]
