"""Options shared by several commands (fusion, criterion, scope, engine) and their parsers."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from selectit.cli.base import F, handles_errors
from selectit.contract import (
    DEFAULT_ALPHA,
    DEFAULT_FORMULA,
    DEFAULT_PROMPT_SET,
    DEFAULT_TOP,
    Formula,
    TurnsAgg,
)
from selectit.ranking import DEFAULT_JACCARD, DEFAULT_TURNS_AGG

if TYPE_CHECKING:
    from selectit import Ranking


def _fusion_options(func: F) -> F:
    """--models, --prompt-set, --alpha, --formula, --weights, --turns-agg, --dedup, --jaccard,
    --max-per-group, --group-by, --diverse: how to rank, built here once into the command's one
    `ranking` argument (a `selectit.Ranking`).

    Shared by rank, select, export, report, diagnose and sql; the defaults are `Ranking()`'s.
    """

    @functools.wraps(func)
    def with_ranking(*args: Any, **kwargs: Any) -> Any:
        given = {name: kwargs.pop(name) for name in RANKING_OPTIONS}
        return func(*args, ranking=_ranking(given), **kwargs)

    for option in reversed([
        click.option("--models", default=None, metavar="A,B",
                     help="Comma-separated model names [default: every active model]."),
        click.option("--prompt-set", default=None, metavar="SET", help=f"Prompt set [default: {DEFAULT_PROMPT_SET}]."),
        click.option("--alpha", default=DEFAULT_ALPHA, show_default=True, type=float,
                     help="α of the sentence level: mean / (1 + α·std)."),
        click.option("--formula", default=DEFAULT_FORMULA.value, show_default=True,
                     type=click.Choice([f.value for f in Formula]),
                     help="Token-level P'_k: p_k/Σp (paper) or softmax(p_k/Σp) (the authors' code)."),
        click.option("--weights", default=None, metavar="A=θ,B=θ",
                     help="Model-level θ per model [default: models.weight, else the parameter count]."),
        click.option("--turns-agg", default=DEFAULT_TURNS_AGG.value, show_default=True,
                     type=click.Choice([t.value for t in TurnsAgg]),
                     help="A conversation's S_sent from its turns': their mean, their min, or the last turn's "
                          "(a sample with an unscored turn ranks under last only)."),
        click.option("--dedup", type=click.Choice(["near", "prompt"]), default=None,
                     help="Keep the best-ranked sample of each group: near (near-duplicates of the whole text, "
                          "MinHash) or prompt (the same normalised first user turn) [default: keep all]."),
        click.option("--jaccard", type=float, default=DEFAULT_JACCARD, show_default=True, metavar="J",
                     help="--dedup near: the estimated Jaccard similarity of word 5-grams that makes two samples "
                          "near-duplicates."),
        click.option("--max-per-group", type=click.IntRange(1), default=None, metavar="N",
                     help="Keep at most N samples (the best-ranked) per group of --group-by."),
        click.option("--group-by", default=None, metavar="COLUMN|id-prefix",
                     help="The groups of --max-per-group: a field of the ingested record, or id-prefix (the "
                          "original id without its _<n> chunk suffix, e.g. ShareGPT's ZUkSe7V_0)."),
        click.option("--diverse", type=float, default=None, metavar="TAU",
                     help="From the top, keep a sample unless its embedding's cosine to one kept is above TAU "
                          "(>= 0.8; needs `selectit embed`)."),
    ]):
        with_ranking = option(with_ranking)
    return with_ranking  # type: ignore[return-value]


#: The options `_fusion_options` adds, gathered into the one `Ranking`.
RANKING_OPTIONS = ("models", "prompt_set", "alpha", "formula", "weights", "turns_agg", "dedup", "jaccard", "max_per_group",
                   "group_by", "diverse")


@handles_errors
def _ranking(given: dict[str, Any]) -> Ranking:
    """The one place the CLI turns the fusion options into a `Ranking` (its errors: one `Error:` line)."""
    from selectit import Ranking

    return Ranking(**given | {"models": _parse_models(given["models"]), "weights": _parse_weights(given["weights"])})


def _top_option(help_text: str) -> Callable[[F], F]:
    """--top SHARE with the fusion's default (report and sql; rank/select/export: `_criterion_options`)."""
    return click.option("--top", type=float, default=DEFAULT_TOP, show_default=True, metavar="SHARE", help=help_text)


def _criterion_options(func: F) -> F:
    """--top / --top-n / --min-score: which part of the ranking is kept."""
    for option in reversed([
        click.option("--top", type=float, default=None, metavar="SHARE",
                     help="Keep the top share of the rankable samples, rounded down but at least one "
                          f"[default: {DEFAULT_TOP}]."),
        click.option("--top-n", type=click.IntRange(1), default=None, metavar="N", help="Keep the top N."),
        click.option("--min-score", type=float, default=None, metavar="X", help="Keep S_model >= X."),
    ]):
        func = option(func)
    return func


def _require_complete_option(func: F) -> F:
    return click.option("--require-complete", is_flag=True,
                        help="Refuse a dataset that is only partly scored (default: one warning line with "
                             "the rankable and dataset counts).")(func)


def _parse_models(models: str | None) -> list[str] | None:
    if models is None:
        return None
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise click.BadParameter(f"{models!r} names no model; write e.g. --models smol,gemma", param_hint="--models")
    if len(set(names)) != len(names):
        raise click.BadParameter(f"{models!r} names a model twice", param_hint="--models")
    return names


def _scope_options(func: F) -> F:
    func = click.option("--turns", type=click.Choice(["all", "last"]), default="all", show_default=True,
                        help="Which assistant turns of a conversation to rate: every one, or the last only "
                             "(a single-turn sample has one either way).")(func)
    func = click.option("--prompt-set", default=None, metavar="SET",
                        help="Only this prompt set [default: every active set].")(func)
    func = click.option("--model", "-m", default=None, metavar="NAME",
                        help="Only this model (its active version) [default: every active model].")(func)
    func = click.option("--dataset", "-d", default=None, metavar="NAME",
                        help="Only the samples of this dataset [default: every dataset].")(func)
    return func


def _engine_options(func: F) -> F:
    """--engine and its options (selectit.scoring.engines): a value for `score` and `worker`."""
    from selectit.api import engine_names

    for option in reversed([
        click.option("--engine", type=click.Choice(engine_names()), default=None,
                     help="Scoring engine: torch (CPU, one GPU), vllm (GPU fleets), openai (an inference server; "
                          "models added with --endpoint always use it), or one an installed package registers "
                          "[default: $SELECTIT_ENGINE, else torch]."),
        click.option("--device-map", type=click.Choice(["auto"]), default=None,
                     help="torch engine: spread a model too big for one GPU over all visible GPUs."),
        click.option("--tensor-parallel-size", type=click.IntRange(1), default=None, metavar="N",
                     help="vllm engine: split each layer over N GPUs [1]."),
        click.option("--pipeline-parallel-size", type=click.IntRange(1), default=None, metavar="N",
                     help="vllm engine: split the layers over N GPUs [1]."),
        click.option("--gpu-memory-utilization", type=click.FloatRange(0, 1, min_open=True), default=None,
                     metavar="F", help="vllm engine: share of each GPU's memory it may use [0.92]."),
        click.option("--max-model-len", type=click.IntRange(2), default=None, metavar="N",
                     help="vllm engine: context length [the model version's max tokens + 1]."),
        click.option("--vllm-args", default=None, metavar="JSON",
                     help='vllm engine: more vllm.LLM arguments, e.g. \'{"enforce_eager": true}\'.'),
        click.option("--logprobs-top", type=click.IntRange(1), default=None, metavar="K",
                     help="openai engine: top-k mode, one request per cell with logprobs=K; a label outside "
                          "the top K counts as 0 and its cell is partial [default: exact mode]."),
        click.option("--request-timeout", type=click.FloatRange(0, min_open=True), default=None, metavar="S",
                     help="openai engine: seconds a request may take before it is retried [120]."),
        click.option("--max-retries", type=click.IntRange(0), default=None, metavar="N",
                     help="openai engine: retries of a request on 429, 5xx or timeout before its cell fails [8]."),
    ]):
        func = option(func)
    return func


def _engine_choice(base: Any, given: dict[str, Any]):  # noqa: ANN202 - selectit.scoring.engines.EngineOptions
    """The given engine options over `base` (the store's, read from the environment once), checked."""
    options = base.replace(**{k: v for k, v in given.items() if v is not None})
    if options.engine == "vllm":
        from selectit.api import require_vllm

        require_vllm()
    return options


def _parse_weights(value: str | None) -> dict[str, float] | None:
    if not value:
        return None
    weights: dict[str, float] = {}
    for part in value.split(","):
        name, sep, number = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            if name.strip() in weights:
                raise click.BadParameter(f"{value!r} gives model {name.strip()!r} two weights", param_hint="--weights")
            weights[name.strip()] = float(number)
        except ValueError:
            raise click.BadParameter(f"{part!r} is not NAME=θ; write e.g. --weights smol=135,gemma=270",
                                     param_hint="--weights") from None
    return weights
