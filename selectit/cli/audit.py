"""`selectit audit`: does the selection work? Known-bad twins of a dataset's records, and how the
raters rank them (docs/audit.md)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from selectit.cli.base import _fmt, echo, handles_errors, main, print_table, store
from selectit.cli.options import _engine_choice, _engine_options, _fusion_options
from selectit.cli.scoring import _ScoringBar
from selectit.contract import DEFAULT_TOP

if TYPE_CHECKING:
    from selectit import Ranking


@main.command()
@click.option("--dataset", "-d", required=True, help="The dataset to audit.")
@_fusion_options
@click.option("--size", type=click.IntRange(2), default=None, metavar="N",
              help="Records of the dataset to draw [default: 3% of it, at least 20].")
@click.option("--seed", type=int, default=0, show_default=True, help="The draw's seed (the same twins on every store).")
@click.option("--top", type=click.FloatRange(0, 1, min_open=True), default=DEFAULT_TOP, show_default=True,
              metavar="SHARE", help="The selected share: how many twins would enter it.")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json"]),
              help="Tables and the verdict, or JSON (rows, verdict, thresholds).")
@click.option("--no-score", is_flag=True,
              help="Store the twins but score nothing (then run `selectit score --dataset D.audit`).")
@click.option("--labels", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Human labels instead of twins: preferences (prompt, chosen, rejected) or records with a "
                   "numeric label, JSON or JSON Lines; scores only their missing cells.")
@click.option("--delete", is_flag=True, help="Remove the dataset's audit and the twins' scores (its own scores stay).")
@_engine_options
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
@handles_errors
def audit(ctx: click.Context, dataset: str, ranking: Ranking, size: int | None, seed: int, top: float, fmt: str,
          no_score: bool, labels: str | None, delete: bool, quiet: bool, **engine_options: Any) -> None:
    """Check that the ranking puts a dataset's records above known-bad copies of them.

    Draws N records of the dataset (by content hash and --seed: the same records on every store)
    and makes known-bad twins of each: another record's response (mismatched), the response cut
    to its first 30% of words (truncated), a refusal, the instruction echoed back (echo), and for
    multi-turn records an earlier assistant turn replaced (turn). They are stored in the dataset
    D.audit, which D's rank, select, export, report and counts never include, and scored like any
    sample (only missing cells). Printed per fused S_model, per model (S_sent) and per prompt
    (S_token): AUROC of clean records over twins, overall and per kind, beside a ranking by
    response length alone; the share of twins that would enter the top share vs chance; Spearman
    ρ with length; and a one-line verdict. The numbers are the view `audit_results` of `selectit sql`.

    With --labels FILE, a human-labelled set instead (stored as D.labels): pairwise preferences
    ({"prompt", "chosen", "rejected"}) give the share of pairs each rater gets right, graded
    records (a record and a numeric "label") Spearman ρ; each beside response length alone.

    \b
    Example:
      selectit audit --dataset alpaca
      selectit audit --dataset alpaca --size 100 --seed 1 --models smollm2 --format json
      selectit sql "SELECT level, model, kind, auroc, auroc_length FROM audit_results WHERE level <> 'prompt'"
      selectit audit --dataset alpaca --labels preferences.jsonl
      selectit audit --dataset alpaca --delete
    """
    opened = store(ctx)
    if delete:
        echo(f"deleted the audit of {dataset} ({opened.delete_audit(dataset)} twin samples and their scores).")
        return
    options = _engine_choice(opened.engine_options, engine_options)
    with _ScoringBar(enabled=not quiet and fmt == "table" and not no_score) as bar:
        result = opened.audit(dataset, ranking=ranking, size=size, seed=seed, top=top, labels=labels,
                              score=not no_score, progress=bar, engine=options)
    if labels is not None:
        _print_labels(result, fmt)
        return
    made = result.made
    if fmt == "json":
        echo(json.dumps({"dataset": dataset, "audit": made.name, "seed": made.seed, "drawn": made.size,
                         "twins": made.twins, "verdict": result.verdict, "passed": result.passed,
                         "rows": result.rows, "thresholds": result.thresholds}, ensure_ascii=False, indent=2,
                        default=float))
        return
    kinds = ", ".join(f"{k} {n}" for k, n in made.twins.items())
    echo(f"audit of {dataset}: {made.size} records drawn (seed {made.seed}) and {made.n_twins} known-bad twins "
         f"({kinds}), in the dataset {made.name}")
    for summary in result.scored:
        echo(f"scored {summary.scored} cells, failed {summary.failed}, skipped {summary.skipped} already scored.")
    if no_score:
        echo(f"Nothing scored: run `selectit score --dataset {made.name}`, then this command again.")
    _print_figures(result.rows, top)
    echo(f"verdict: {result.verdict}")


def _rater(row: dict[str, Any]) -> str:
    if row["level"] == "fusion":
        return "S_model (fused)"
    return f"{row['model']}" if row["level"] == "model" else f"{row['model']} prompt {row['position']}"


def _print_figures(rows: list[dict[str, Any]], top: float) -> None:
    """Two tables: AUROC per rater and kind (length-only in brackets), and the top share's intake."""
    if not rows:
        return
    kinds = sorted({r["kind"] for r in rows} - {"all"})
    by_rater: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_rater.setdefault(_rater(r), {})[r["kind"]] = r

    def cell(r: dict[str, Any] | None) -> str:
        return "–" if r is None or r["auroc"] is None else f"{r['auroc']:.2f} ({r['auroc_length']:.2f})"

    print_table("AUROC of clean records over twins (a length-only ranking in brackets; 0.5 = chance)",
                ["rater", "clean", "twins", "all", *kinds],
                [(name, per["all"]["n_clean"], per["all"]["n_bad"], cell(per["all"]), *(cell(per.get(k)) for k in kinds))
                 for name, per in by_rater.items() if "all" in per])
    share = f"{top:.0%}"
    print_table(f"twins that would enter the top {share} (chance: {share})",
                ["rater", "twins in top", "by length", "ρ with length"],
                [(name, _pct(per["all"]["twins_in_top"]), _pct(per["all"]["twins_in_top_length"]),
                  _fmt(per["all"]["rho_length"], 2)) for name, per in by_rater.items() if "all" in per])


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _print_labels(result: Any, fmt: str) -> None:
    """`--labels`: agreement with the human labels per rater, beside response length alone."""
    made = result.made
    if fmt == "json":
        echo(json.dumps({"dataset": result.dataset, "labels": made.name, "file": made.path, "kind": result.kind,
                         "verdict": result.verdict, "rows": result.rows}, ensure_ascii=False, indent=2))
        return
    n = len(made.pairs) if result.kind == "pairs" else len(made.labels)
    echo(f"labels of {result.dataset}: {n} {'preference pairs' if result.kind == 'pairs' else 'labelled records'} "
         f"from {made.path}, in the dataset {made.name}")
    for summary in result.scored:
        echo(f"scored {summary.scored} cells, failed {summary.failed}, skipped {summary.skipped} already scored.")
    figure = "accuracy" if result.kind == "pairs" else "ρ with label"
    what = "pairwise accuracy; chance 0.5" if result.kind == "pairs" else "Spearman ρ"
    print_table(f"agreement with the human labels ({what})",
                ["rater", "n", figure, "length alone"],
                [(_rater(r), r["n"], _fmt(r["agreement"], 3), _fmt(r["agreement_length"], 3)) for r in result.rows])
    echo(f"verdict: {result.verdict}")
