"""Commands that read the ratings: rank, select, export, report, diagnose, sql."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from selectit.cli.base import (
    UserError,
    _fmt,
    _one_line,
    _warn,
    echo,
    handles_errors,
    main,
    print_table,
    store,
)
from selectit.cli.options import (
    _criterion_options,
    _fusion_options,
    _require_complete_option,
    _top_option,
)
from selectit.contract import EXPORT_FORMATS

if TYPE_CHECKING:
    from selectit import Ranking


@main.command()
@click.option("--dataset", "-d", required=True, help="The dataset to report on.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory for index.html and the plots.")
@_fusion_options
@_top_option("Share of the ranking that counts as selected (rounded down, at least one).")
@click.pass_context
@handles_errors
def report(ctx: click.Context, dataset: str, out: str, ranking: Ranking, top: float) -> None:
    """Write an HTML report with plots (and the numbers behind them) for a scored dataset.

    Coverage, the S_model histogram with the selection's cut-off, the 10 best and 10 worst ranked
    samples with their scores, score distributions per model and per prompt (prompts labelled with
    their first words), agreement between prompts and between models, and the selected top share
    vs the full dataset (response length, calculation instructions). A rerun into the same DIR replaces only the files the previous report wrote (listed in
    DIR/.selectit-manifest.json); anything else in DIR is left alone.

    \b
    Example:
      selectit report --dataset alpaca --out report --top 0.2
      selectit report --dataset alpaca --out report-2 --models smollm2,gemma --weights smollm2=1,gemma=2
    """
    result = store(ctx).report(dataset, out, ranking=ranking, top=top)
    echo(
        f"Report: {result.index} ({len(result.pngs)} plots; {result.n_rankable} of {result.n_samples} samples "
        f"rankable, {result.n_selected} selected)."
    )
    _print_health_warnings(ctx, dataset, ranking=ranking)


def _print_coverage(cov, params) -> None:  # noqa: ANN001
    shares = {m.model_id: m.share for m in params.models}
    print_table(f"coverage of {cov.dataset} (prompt set {params.prompt_set}, {len(params.prompts)} prompts)",
                ["model", "θ share", "ok", "missing", "failed"],
                [(m.model, f"{shares[m.model_id]:.4f}", m.ok, m.missing, m.failed) for m in cov.models])
    line = f"rankable: {cov.n_rankable} of {cov.n_samples} samples"
    if cov.n_not_rankable:
        line += (f" ({cov.n_not_rankable} not rankable: {cov.samples_with_missing} with missing cells, "
                 f"{cov.samples_with_failed} with failed cells)")
    if cov.n_rankable_last:
        line += (f"; {cov.n_rankable_last} of them have their last turn scored but not every turn "
                 f"(--turns-agg {cov.turns_agg}; --turns-agg last ranks them)")
    echo(line)
    if cov.cells_partial:
        echo(f"warning: {cov.cells_partial} cells are partial (scored with --logprobs-top: a label outside "
                   f"the server's top K counted as 0)")


@main.command()
@click.option("--dataset", "-d", required=True, help="The dataset to rank.")
@_fusion_options
@_criterion_options
@click.option("--limit", default=20, show_default=True, type=click.IntRange(0), help="Rows of the ranking to show.")
@_require_complete_option
@click.pass_context
@handles_errors
def rank(ctx: click.Context, dataset: str, ranking: Ranking, top: float | None, top_n: int | None,
         min_score: float | None, limit: int, require_complete: bool) -> None:
    """Show the head of a dataset's ranking and how much of it is rankable yet.

    S_model is recomputed from the stored ratings for any --alpha, --formula, --models or
    --weights, without scoring anything. Ties: higher S_model first, then the earlier position
    in the dataset. A sample is ranked only when all its (model, prompt) cells are scored ok.

    \b
    Example:
      selectit rank --dataset alpaca --top 0.2
      selectit rank --dataset alpaca --alpha 0.5 --formula reference-code --weights smol=1,gemma=2
      selectit rank --dataset alpaca --top 0.2 --require-complete
    """
    summary = store(ctx).rank_summary(dataset, ranking=ranking, top=top, top_n=top_n, min_score=min_score,
                                      limit=limit, require_complete=require_complete)
    params, criterion, head = summary.params, summary.criterion, summary.head.to_pylist()
    echo(f"{dataset}: alpha {params.alpha:g}, formula {params.formula}, models "
                  + ", ".join(f"{m.name} (θ {m.theta:g})" for m in params.models))
    if head:
        print_table(f"ranking of {dataset} ({criterion.describe()}, first {len(head)})",
                    ["rank", "sample", "position", "score", "instruction"],
                    [(r["rank"], r["sample_id"], r["position"], f"{r['s_model']:.6f}",
                      " ".join((r["instruction"] or "").split())[:60]) for r in head])
    _print_coverage(summary.coverage, params)
    if summary.n_rankable == 0:
        echo(f"Nothing is rankable yet: score the missing cells with `selectit score --dataset {dataset}`.")
    elif criterion.where() != "TRUE":
        echo(f"selected: {summary.n_chosen} of {summary.n_rankable} rankable ({criterion.describe()})")
        _warn(summary.warning)
    if summary.n_rankable and ranking.trims:
        echo(f"kept after {_trims(ranking)}: {summary.n_kept} of {summary.n_rankable} rankable samples")
    _print_health_warnings(ctx, dataset, ranking=ranking)


@main.command()
@click.argument("name")
@click.option("--dataset", "-d", required=True, help="The dataset to select from.")
@_fusion_options
@_criterion_options
@click.option("--random", "random_share", type=float, default=None, metavar="SHARE",
              help="A control: draw SHARE of the rankable samples at random (same size rule as --top).")
@click.option("--seed", type=int, default=0, show_default=True, help="The seed of --random.")
@click.option("--by", type=click.Choice(["score", "length"]), default="score", show_default=True,
              help="score: SelectIT's ranking; length: a control of the longest responses (with --top/--top-n).")
@click.option("--sql", "query", default=None, metavar="QUERY",
              help="Freeze the samples of a read-only query with a sample_id column (over the views of `selectit "
                   "sql`), in its order; the query is recorded.")
@click.option("--ids", "ids_file", default=None, type=click.Path(dir_okay=False), metavar="FILE",
              help="Freeze the sample ids of FILE (one a line, '#' comments), in its order.")
@_require_complete_option
@click.pass_context
@handles_errors
def select(ctx: click.Context, name: str, dataset: str, ranking: Ranking, top: float | None, top_n: int | None,
           min_score: float | None, random_share: float | None, seed: int, by: str, query: str | None,
           ids_file: str | None, require_complete: bool) -> None:
    """Freeze the current top of a dataset's ranking as the selection NAME.

    The ranks, sample ids, scores and parameters are stored, so `selectit export --selection NAME`
    writes the same bytes later, whatever is ingested or scored meanwhile. Names are never reused.

    Controls for an honest ablation come from the same rankable samples with the same size rule,
    and are frozen and exported the same way (their card says how they were drawn): --random
    SHARE (a seeded hash of each sample's content, so every store draws the same ids) and --by
    length (the longest responses).

    --dedup near|prompt and --max-per-group N --group-by COLUMN|id-prefix keep the best-ranked
    sample (or N) of each group before the top is taken (docs/dedup.md); --sql QUERY and --ids
    FILE freeze exactly the samples they name, in their order.

    \b
    Example:
      selectit select selective-alpaca-v1 --dataset alpaca --top 0.2
      selectit export --selection selective-alpaca-v1 --out selective_alpaca.json
      selectit select random-20 --dataset alpaca --random 0.2 --seed 1
      selectit select longest-20 --dataset alpaca --by length --top 0.2
      selectit select full-only --dataset alpaca --top 0.2 --require-complete
      selectit select alpaca-dedup --dataset alpaca --top 0.2 --dedup near
      selectit select one-per-chat --dataset chats --top-n 5000 --max-per-group 1 --group-by id-prefix
      selectit select short-top --dataset alpaca --sql "SELECT sample_id FROM ranking r JOIN store.samples s
        ON s.id = r.sample_id WHERE dataset = 'alpaca' AND s.n_chars < 500 ORDER BY rank LIMIT 100"
      selectit select hand-picked --dataset alpaca --ids picked.txt
    """
    info = store(ctx).select(name, dataset, ranking=ranking, top=top, top_n=top_n, min_score=min_score,
                             random=random_share, seed=seed, by=by, require_complete=require_complete,
                             sql=query, ids=ids_file)
    echo(f"selection {name} (id {info.id}): {info.n_selected} of {info.n_rankable} rankable samples of "
               f"{dataset} ({info.how}).")
    _warn(info.warning)
    _print_health_warnings(ctx, dataset, selection=name)


@main.command()
@click.option("--selection", default=None, metavar="NAME", help="A frozen selection (from `selectit select`).")
@click.option("--dataset", "-d", default=None, help="Or: the current top of this dataset's ranking.")
@_fusion_options
@_criterion_options
@click.option("--out", required=True, type=click.Path(),
              help="The file to write (replaced whole), or a directory (existing, or ending with '/') that "
                   "receives NAME.<ext> and NAME.README.md, NAME being the entry (--llamafactory NAME, the "
                   "selection or the dataset).")
@click.option("--format", "fmt", default=None, type=click.Choice(EXPORT_FORMATS),
              help="Output format [default: original, the records as ingested, when every one was kept; "
                   "else alpaca-json].")
@click.option("--order", default="rank", show_default=True, type=click.Choice(["rank", "dataset"]),
              help="Best first, or the order of the ingested files.")
@click.option("--with-scores", is_flag=True,
              help="Add rank, s_model, s_sent per model and s_token per model and prompt.")
@click.option("--llamafactory", is_flag=False, flag_value="", default=None, metavar="[NAME]",
              help="Also merge the entry LLaMA-Factory needs into dataset_info.json beside the data "
                   "[NAME default: the selection or dataset].")
@click.option("--card/--no-card", default=True, show_default=True,
              help="Write the dataset card (README.md with the provenance) beside the data.")
@click.option("--overwrite", is_flag=True,
              help="Replace existing files this export did not write for the same entry (an ingested "
                   "source file, a file of another tool); never the curation database.")
@click.option("--card-paths", is_flag=True,
              help="Record the source files' full paths in the card (default: file name and sha256).")
@_require_complete_option
@click.pass_context
@handles_errors
def export(ctx: click.Context, selection: str | None, dataset: str | None, ranking: Ranking, top: float | None,
           top_n: int | None, min_score: float | None, out: str, fmt: str | None, order: str, with_scores: bool,
           llamafactory: str | None, card: bool, overwrite: bool, card_paths: bool, require_complete: bool) -> None:
    """Write a selection for training: the records as ingested, or a format fine-tuning tools read.

    Formats: original (default: each record exactly as it was ingested, in the input's format),
    alpaca-json, jsonl, sharegpt, messages, parquet, hf-dataset (a save_to_disk directory). A
    dataset card (README.md, YAML front matter) records the provenance: source files and hashes,
    models, prompts, α, formula, counts. A frozen selection exports to the same data bytes every
    time. Every target is checked first and all files are renamed into place at the end: an export
    replaces only the file named by --out and the files it wrote itself for the same entry
    (--overwrite for others), never the curation database.

    \b
    Example:
      selectit export --selection selective-alpaca-v1 --out selective_alpaca.json
      selectit export --selection selective-alpaca-v1 --out data/ --format sharegpt --llamafactory
      selectit export --dataset alpaca --top-n 1000 --out top1000.parquet --format parquet --with-scores
      selectit export --selection selective-alpaca-v1 --out alpaca.json --overwrite --card-paths
    """
    if (selection is None) == (dataset is None):
        raise UserError("give either --selection NAME (a frozen selection) or --dataset D (the current ranking)")
    result = store(ctx).export(out, selection=selection, dataset=dataset, format=fmt, order=order,
                               with_scores=with_scores, llamafactory=llamafactory, card=card, ranking=ranking,
                               top=top, top_n=top_n, min_score=min_score, overwrite=overwrite,
                               card_paths=card_paths, require_complete=require_complete)
    what = f"selection {selection}" if selection else f"{dataset}"
    if result.note:
        echo(result.note, err=True)
    _warn(result.warning)
    _warn(result.left_out)
    shown = f"original {result.format}" if (fmt or "original") == "original" and not result.note else result.format
    echo(f"wrote {result.n} samples of {what} to {result.data} ({shown}).")
    for extra in (result.card, result.dataset_info):
        if extra is not None:
            echo(f"wrote {extra}")
    _print_health_warnings(ctx, dataset, selection=selection, ranking=ranking)


def _trims(ranking: Ranking) -> str:
    """What a ranking takes out, as its options read: "--dedup near, --max-per-group 1 --group-by id-prefix"."""
    parts = [f"--dedup {ranking.dedup}"] if ranking.dedup else []
    if ranking.max_per_group is not None:
        parts.append(f"--max-per-group {ranking.max_per_group} --group-by {ranking.group_by}")
    if ranking.diverse is not None:
        parts.append(f"--diverse {ranking.diverse:g}")
    return ", ".join(parts)


def _print_health_warnings(ctx: click.Context, dataset: str | None, *, selection: str | None = None,
                           ranking: Ranking | None = None) -> None:
    """The rater health warnings on stderr, one line each (never changes the exit code)."""
    from selectit.errors import SelectitError

    try:
        lines = store(ctx).health_warnings(dataset or "", selection=selection, **({"ranking": ranking} if ranking else {}))
    except SelectitError as exc:  # the command itself already succeeded: say why there is no check
        lines = [f"rater health not checked: {_one_line(str(exc))}"]
    for line in lines:
        echo(f"warning: {line}", err=True)


@main.command()
@click.option("--dataset", "-d", required=True, help="The dataset whose ratings to check.")
@_fusion_options
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json"]),
              help="A table and the warnings, or JSON (rows, warnings, thresholds).")
@click.pass_context
@handles_errors
def diagnose(ctx: click.Context, dataset: str, ranking: Ranking, fmt: str) -> None:
    """Check the raters: can their ratings of a dataset be trusted?

    Per model (and per prompt): the label mass (how much probability the rater puts on the label
    digits at all; median and 10th percentile), the mean max P' (decisiveness), the share of cells
    with the most common S_base (collapse), the share of truncated cells, and Spearman ρ between
    the model's prompts, between models and with the response length. A figure past its threshold
    (README: "Can I trust these ratings?") prints a warning naming the rater and what to do.
    Conversations add a table by turn position: the mean S_sent and the truncated cells of each
    model's first, second, … rated turns.

    \b
    Example:
      selectit diagnose --dataset alpaca
      selectit diagnose --dataset alpaca --models smollm2 --format json
    """
    import json

    from selectit.api import health_thresholds

    table = store(ctx).diagnose(dataset, ranking=ranking)
    rows = table.to_pylist()
    warnings = [line for r in rows for line in r["warning"].splitlines()]
    if fmt == "json":
        echo(json.dumps({"dataset": dataset, "rows": rows, "warnings": warnings,
                               "thresholds": health_thresholds()}, ensure_ascii=False, indent=2))
        return
    turns, rows = [r for r in rows if r["level"] == "turn"], [r for r in rows if r["level"] != "turn"]
    print_table(f"rater health of {dataset}",
                ["model", "prompt", "cells", "label mass (median)", "p10", "mean max P'", "collapse",
                 "truncated", "ρ prompts", "ρ models", "ρ length"],
                [(r["model"] or "(all models)", "all" if r["level"] != "prompt" else str(r["position"]), r["cells"],
                  _fmt(r["mass_median"]), _fmt(r["mass_p10"]), _fmt(r["mean_max_p"]),
                  "–" if r["collapse_share"] is None else f"{100 * r['collapse_share']:.0f}% → {r['collapse_base']}",
                  "–" if r["truncated_share"] is None else f"{100 * r['truncated_share']:.0f}%",
                  _fmt(r["rho_prompts"], 2), _fmt(r["rho_models"], 2), _fmt(r["rho_length"], 2)) for r in rows])
    if turns:  # conversations: do later turns rate lower, are their histories cut?
        print_table("by turn position (1: a conversation's first rated turn; conversations of 2+ rated turns)",
                    ["model", "turn", "turns rated", "mean S_sent", "cells", "truncated"],
                    [(r["model"], r["position"], r["samples"], _fmt(r["mean_s_sent"]), r["cells"],
                      f"{r['truncated']} ({100 * r['truncated_share']:.0f}%)") for r in turns])
    for line in warnings:
        echo(f"warning: {line}")
    if not warnings:
        echo("no warnings: every figure is within its threshold.")


@main.command()
@click.argument("query")
@_fusion_options
@_top_option("The share kept in the selective_alpaca view (rounded down, at least one).")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "csv", "json"]),
              help="Output format.")
@click.pass_context
@handles_errors
def sql(ctx: click.Context, query: str, ranking: Ranking, top: float, fmt: str) -> None:
    """Run SQL in DuckDB over the fusion views and the curation tables (read-only).

    Views: token_scores, sentence_scores, model_scores, ranking, selective_alpaca; tables
    chosen_models, chosen_prompts; the curation tables as store.<table> (e.g. store.samples).
    Statements that would change the curation database fail.

    \b
    Example:
      selectit sql "SELECT dataset, count(*) FROM ranking GROUP BY dataset"
      selectit sql "SELECT model, avg(s_sent) FROM sentence_scores GROUP BY model" --format csv
    """
    import csv
    import json

    columns, rows = store(ctx).query(query, ranking=ranking, top=top)
    if not columns:
        echo("OK")
    elif fmt == "csv":
        import io

        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        echo(buffer.getvalue().removesuffix("\n"))
    elif fmt == "json":
        keys = unique_names(columns)
        echo(json.dumps([dict(zip(keys, map(json_value, r))) for r in rows], ensure_ascii=False, indent=2,
                        default=str, allow_nan=False))
    else:
        print_table(None, columns, rows)


# -- sql --format json: the rows as JSON objects ----------------------------------------------
def unique_names(columns: Sequence[str]) -> list[str]:
    """Column names made unique for JSON objects: a repeated `a` becomes `a_2`, `a_3`, …

    >>> unique_names(["a", "b", "a", "a_2"])
    ['a', 'b', 'a_3', 'a_2']
    """
    taken = set(columns)
    seen: set[str] = set()
    out = []
    for name in columns:
        if name in seen:
            n = 2
            while f"{name}_{n}" in taken:
                n += 1
            taken.add(f"{name}_{n}")
            name = f"{name}_{n}"
        seen.add(name)
        out.append(name)
    return out


def json_value(value: Any) -> Any:
    """A result value for JSON: NaN and ±Infinity (no JSON numbers) become null.

    >>> [json_value(float("nan")), json_value(1.5), json_value("x")]
    [None, 1.5, 'x']
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return value
