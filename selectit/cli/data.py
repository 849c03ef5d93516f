"""Commands for the store and its data: init, ingest, datasets, status, demo-data, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from selectit.cli.base import (
    _warn,
    console,
    echo,
    err_console,
    handles_errors,
    main,
    print_table,
    store,
)


@main.command()
@click.pass_context
@handles_errors
def init(ctx: click.Context) -> None:
    """Create the database, or upgrade it to the current schema.

    Only an empty (or new) database becomes a store; another application's database is refused,
    naming its tables.

    \b
    Example:
      selectit --db postgresql://selectit@localhost/selectit init
    """
    from selectit.api import init as init_store

    result = init_store(ctx.obj["db_url"])
    if result.before == result.after:
        console.print(f"{result.url} is up to date (revision {result.after}).")
    else:
        console.print(f"{result.url} upgraded: {result.before or 'empty'} → {result.after}.")


@main.command()
@click.argument("file", type=click.Path())
@click.option("--dataset", "-d", required=True, help="Dataset name (created if new; re-ingesting adds nothing).")
@click.option("--format", "fmt", metavar="FORMAT", default=None,
              help="alpaca-json | jsonl | sharegpt | messages | parquet | csv | tsv | arrow | hf-dir "
                   "[default: detected].")
@click.option("--map", "column_map", metavar="FIELD=COLUMN,…", default=None,
              help="Read other schemas: which column holds instruction, input, output, system (or prompt, "
                   "completion), e.g. instruction=question,output=response.")
@click.option("--split", default=None, metavar="NAME", help="The split of a saved DatasetDict directory or a Hub dataset.")
@click.option("--skip-invalid", is_flag=True,
              help="Ingest the valid records and list the invalid ones, instead of failing.")
@click.option("--limit", type=click.IntRange(1), default=None, metavar="N",
              help="Read only the file's first N records.")
@click.pass_context
@handles_errors
def ingest(ctx: click.Context, file: str, dataset: str, fmt: str | None, column_map: str | None,
           split: str | None, skip_invalid: bool, limit: int | None) -> None:
    """Add the records of FILE (`-` for standard input; or a save_to_disk directory, or an OWNER/NAME Hub dataset from the
    local Hugging Face cache, offline) to a dataset (one transaction; duplicates stored once). Each
    record is kept as it was, for `export --format original`. A conversation is rated through its
    last assistant turn; a warning line counts the records with turns after it (not rated). A record
    (a JSON object or line, a row) may take at most 64 MiB; a longer one is an invalid record.

    \b
    Example:
      selectit ingest selectit/data/alpaca_en_demo.json --dataset alpaca-demo
      selectit ingest chats.jsonl --dataset chats --format sharegpt --skip-invalid
      selectit ingest alpaca.json --dataset alpaca-first-100 --limit 100
      selectit ingest dolly.jsonl --dataset dolly --map input=context,output=response
      selectit ingest saved_dataset/ --dataset orca --split train --map instruction=question,output=response,system=system_prompt
      selectit ingest tatsu-lab/alpaca --dataset alpaca --split train
      cat chats.jsonl | selectit ingest - --dataset chats --format jsonl
    """
    with _ingest_progress() as progress:
        result = store(ctx).ingest(file, dataset, format=fmt, map=column_map, split=split, skip_invalid=skip_invalid,
                                  limit=limit, progress=progress)
    if result.invalid:
        echo(f"skipped {len(result.invalid)} invalid records:", err=True)
        for line in result.invalid_report():
            echo(line, err=True)
    _warn(result.warning)
    for line in result.quirk_warnings:
        _warn(line)
    echo(result.summary)


def _ingest_progress():  # noqa: ANN202 - a context manager yielding the callback
    """A rich progress bar on stderr (silent when stderr is not a terminal)."""
    from contextlib import contextmanager

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    @contextmanager
    def bar():  # noqa: ANN202
        with Progress(TextColumn("ingesting"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TextColumn("{task.fields[records]} records"), TimeElapsedColumn(),
                      console=err_console, transient=True, disable=not err_console.is_terminal) as prog:
            task = prog.add_task("ingest", total=None, records=0)
            yield lambda records, done, total: prog.update(task, completed=done, total=total, records=records)

    return bar()


@main.command()
@click.pass_context
@handles_errors
def datasets(ctx: click.Context) -> None:
    """List the datasets: name, samples, created, source.

    \b
    Example:
      selectit datasets
    """
    table = store(ctx).datasets()
    print_table(None, ["dataset", "samples", "created", "source"], [tuple(r.values()) for r in table.to_pylist()])


@main.command()
@click.option("--dataset", "-d", default=None, metavar="NAME",
              help="Count only this dataset's samples: its cells, jobs, rates and ETAs.")
@click.pass_context
@handles_errors
def status(ctx: click.Context, dataset: str | None) -> None:
    """Show what the store holds and how scoring goes.

    Samples per dataset; per model × prompt set the cells done / missing / failed, the jobs
    queued / running / stalled (holder gone: lease expired, or a dead process on this host) /
    failed, and the cells scored per minute over the last minute and the last ten; per model
    the ETA at the last ten minutes' rate and the time left at the rate of its last finished
    jobs; the fleet's control ticks.

    \b
    Example:
      selectit status
      selectit status --dataset alpaca     # that dataset's cells only
    """
    api_store = store(ctx)
    status = api_store.status(dataset)
    print_table("samples", ["dataset", "samples"], status.samples_per_dataset)
    if dataset is None:
        console.print(f"distinct samples stored: {status.distinct_samples}")
    _print_scoring_status(status.scoring, api_store, dataset)
    _print_model_progress(status.models, dataset)
    done, missing = status.signatures
    console.print(f"near-duplicate signatures: {done} cells" + (
        f", {missing} samples without one (`selectit score` computes them)" if missing else ""))
    _print_control_ticks(status.control_ticks)


def _print_scoring_status(rows: list[Any], api_store: Any = None, dataset: str | None = None) -> None:
    if not rows:
        return
    # conversations with earlier turns unscored: how many of the missing cells are theirs (per turn)
    earlier = any(getattr(r, "missing_earlier", 0) for r in rows)
    print_table("scoring (per model × prompt set)",
                ["model", "prompt set", "done", "missing", *(["of earlier turns"] if earlier else []), "failed",
                 "queued", "running", "stalled", "failed jobs", "cells/min (1 min)", "cells/min (10 min)",
                 "done by engine"],
                [(r.model, r.prompt_set, r.done, r.missing, *([r.missing_earlier] if earlier else []), r.failed,
                  r.queued, r.running, r.stalled, r.failed_jobs, r.cells_per_min_1m, r.cells_per_min,
                  ", ".join(f"{e} {n}" for e, n in r.by_engine) or "–")
                 for r in rows])
    if api_store is None:
        return
    # diagnose's judgement, of the dataset's samples (or of every sample once)
    words = api_store.health_words(sorted({r.prompt_set for r in rows if r.done}), dataset)
    print_table("rater health (see selectit diagnose)", ["model", "prompt set", "health"],
                [(r.model, r.prompt_set, words.get((r.model, r.prompt_set), "–")) for r in rows])


def _print_model_progress(models: list[Any], dataset: str | None) -> None:
    if models:
        print_table(f"per model (all prompt sets{f', dataset {dataset}' if dataset else ''})",
                    ["model", "done", "missing", "failed", "cells/min (1 min)", "cells/min (10 min)",
                     "ETA (10-min rate)", "time left (recorded rate)"],
                    [(m.model, m.done, m.missing, m.failed, m.cells_per_min_1m, m.cells_per_min, m.eta,
                      m.time_left) for m in models])


def _print_control_ticks(ticks: list[Any]) -> None:
    if ticks:
        print_table("control ticks of the worker fleet (last run, UTC)",
                    ["tick", "last run", "worker", "seconds", "runs", "last error"],
                    [(t.name, f"{t.started_at:%Y-%m-%d %H:%M:%S}", t.worker, f"{t.seconds:.2f}", t.runs,
                      f"{t.error} (at {t.failed_at:%H:%M:%S})" if t.error else "–") for t in ticks])


@main.command("demo-data")
@click.argument("path", type=click.Path())
@handles_errors
def demo_data(path: str) -> None:
    """Write the bundled demo dataset (999 Alpaca records) to PATH, a new file or a directory.

    The data ships inside the package, so a pip install can follow the README without a clone.

    \b
    Example:
      selectit demo-data alpaca_en_demo.json
      selectit ingest alpaca_en_demo.json --dataset alpaca-demo
    """
    from selectit.data import write_demo_data

    echo(f"wrote {write_demo_data(path)} (999 Alpaca-format records)")


@main.command()
@click.option("--samples", default=60, show_default=True, type=click.IntRange(1, 999),
              help="How many of the 999 demo records to score (999 = the full set, about an hour on 2 CPU cores).")
@click.option("--out", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Where selective_alpaca.json and report/ are written.")
@click.option("--model", "models", multiple=True, metavar="NAME=SOURCE",
              default=("smollm2=smollm2-135m", "gemma3=gemma3-270m"), show_default=True,
              help="The models, in order (repeatable; the first is scored alone, then each next one adds its cells).")
@click.pass_context
def demo(ctx: click.Context, samples: int, out: str, models: tuple[str, ...]) -> None:
    """Run the main job end to end on the bundled 999-record Alpaca demo dataset.

    Each step is an ordinary selectit command, printed before it runs: ingest, register
    SmolLM2-135M-Instruct, score, add Gemma-3-270M and score only its cells, audit the ranking
    with known-bad twins of 20 records (its verdict), rank with the model-level fusion, export the
    top 20% (Selective Alpaca) and write the HTML report. A second run reuses every stored score.

    \b
    Example:
      selectit demo                  # about 5 minutes on 2 CPU cores
      selectit demo --samples 999    # the whole demo dataset
    """
    from selectit.data import DEMO_DATA

    pairs = [m.partition("=")[::2] for m in models]
    if not pairs or any(not name or not source for name, source in pairs):
        raise click.BadParameter("write each model as NAME=SOURCE, e.g. --model smollm2=smollm2-135m",
                                 param_hint="--model")
    subset = f"alpaca-demo-{samples}"
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = [
        ["ingest", str(DEMO_DATA), "--dataset", "alpaca-demo"],
        ["ingest", str(DEMO_DATA), "--dataset", subset, "--limit", str(samples)],
    ]
    for i, (name, source) in enumerate(pairs):
        steps.append(["model", "add", name, "--source", source])
        # After the first model only the new model's cells are missing: stored ones are reused.
        steps.append(["score", "--dataset", subset] + (["--model", name] if i == 0 else []))
    steps += [
        # known-bad twins of 20 records must rank below them: the verdict says whether they do
        ["audit", "--dataset", subset, "--size", "20"],
        ["rank", "--dataset", subset, "--limit", "10"],
        ["export", "--dataset", subset, "--top", "0.2", "--out", str(out_dir / "selective_alpaca.json")],
        ["report", "--dataset", subset, "--out", str(out_dir / "report")],
        ["status"],
    ]
    db_args = ["--db", ctx.obj["db_url"]] if ctx.obj["db_url"] else []
    for step in steps:
        console.print(f"\n$ selectit {' '.join(step)}", style="bold")
        code = main.main([*db_args, *step], prog_name="selectit", standalone_mode=False)
        if code:  # a step that was interrupted or failed ends the demo with its exit code
            ctx.exit(code)
    console.print(f"\nSelective Alpaca (top 20% of {subset}): {out_dir / 'selective_alpaca.json'}; "
                  f"report: {out_dir / 'report' / 'index.html'}")
