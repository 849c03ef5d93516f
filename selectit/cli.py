"""The `selectit` command line: a thin click layer over the library modules.

Every command's help ends with a runnable example; errors say what to do next and exit 1.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from selectit import db

F = TypeVar("F", bound=Callable[..., Any])

console = Console()
err_console = Console(stderr=True)


class UserError(click.ClickException):
    """An error the user can fix; printed as `Error: …` with exit code 1."""


def handles_errors(func: F) -> F:
    """Turn the library's own errors into clean `Error: …` messages (no traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from selectit.errors import SelectitError

        try:
            return func(*args, **kwargs)
        except (db.StoreError, SelectitError) as exc:
            raise UserError(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--db",
    "db_url",
    envvar=db.URL_ENV,
    default=None,
    metavar="URL",
    help=f"SQLAlchemy database URL [env {db.URL_ENV}; default sqlite:///selectit.db].",
)
@click.version_option(package_name="selectit")
@click.pass_context
def main(ctx: click.Context, db_url: str | None) -> None:
    """selectit: choose instruction-tuning data by an LLM's uncertainty-aware self-ratings.

    \b
    Example:
      selectit ingest alpaca.json --dataset alpaca
      selectit status
    """
    ctx.obj = {"db_url": db_url}


def store(ctx: click.Context):  # noqa: ANN201
    """The engine for the command's database, at the migrations' head."""
    return db.open_store(ctx.obj["db_url"])


@main.command()
@click.pass_context
@handles_errors
def init(ctx: click.Context) -> None:
    """Create the database, or upgrade it to the current schema.

    \b
    Example:
      selectit --db postgresql://selectit@localhost/selectit init
    """
    url = ctx.obj["db_url"]
    engine = db.make_engine(url)
    before = db.current_revision(engine)
    db.upgrade(url)
    after = db.current_revision(engine)
    engine.dispose()
    if before == after:
        console.print(f"{engine.url!r} is up to date (revision {after}).")
    else:
        console.print(f"{engine.url!r} upgraded: {before or 'empty'} → {after}.")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dataset", "-d", required=True, help="Dataset name (created if new; re-ingesting adds nothing).")
@click.option("--format", "fmt", metavar="FORMAT", default=None,
              help="alpaca-json | jsonl | sharegpt | messages | parquet [default: detected].")
@click.option("--skip-invalid", is_flag=True,
              help="Ingest the valid records and list the invalid ones, instead of failing.")
@click.pass_context
@handles_errors
def ingest(ctx: click.Context, file: str, dataset: str, fmt: str | None, skip_invalid: bool) -> None:
    """Add the records of FILE to a dataset (one transaction; duplicates stored once).

    \b
    Example:
      selectit ingest selectit/data/alpaca_en_demo.json --dataset alpaca-demo
      selectit ingest chats.jsonl --dataset chats --format sharegpt --skip-invalid
    """
    from selectit.ingest import ingest_file

    engine = store(ctx)
    with _ingest_progress() as progress:
        result = ingest_file(engine, file, dataset, fmt=fmt, skip_invalid=skip_invalid, progress=progress)
    if result.invalid:
        err_console.print(f"skipped {len(result.invalid)} invalid records:", markup=False, highlight=False)
        for line in result.invalid_report():
            err_console.print(line, markup=False, highlight=False)
    click.echo(result.summary)


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
    from selectit.ingest import dataset_rows

    print_table(None, ["dataset", "samples", "created", "source"], dataset_rows(store(ctx)))


@main.command()
@click.pass_context
@handles_errors
def status(ctx: click.Context) -> None:
    """Show what the store holds: samples per dataset and distinct samples in all.

    \b
    Example:
      selectit status
    """
    from selectit.ingest import sample_counts

    per_dataset, total = sample_counts(store(ctx))
    print_table("samples", ["dataset", "samples"], per_dataset)
    console.print(f"distinct samples stored: {total}")
    _print_scoring_status(store(ctx))


@main.command()
@click.option("--dataset", required=True, help="The dataset to report on.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory for index.html and the plots.")
@click.option("--models", default=None, metavar="A,B", help="Comma-separated model names [default: all active].")
@click.option("--prompt-set", default=None, help="Prompt set [default: the default set].")
@click.option("--alpha", default=0.2, show_default=True, type=float, help="α of the sentence level.")
@click.option("--formula", default="paper", show_default=True, type=click.Choice(["paper", "reference-code"]),
              help="Token-level formula.")  # fmt: skip
@click.option("--top", default=0.2, show_default=True, type=float, help="Share of the ranking that counts as selected.")
@click.pass_context
@handles_errors
def report(ctx: click.Context, dataset: str, out: str, models: str | None, prompt_set: str | None,
           alpha: float, formula: str, top: float) -> None:  # fmt: skip
    """Write an HTML report with plots (and the numbers behind them) for a scored dataset.

    Score distributions per model and per prompt, agreement between prompts and between models,
    the selected top share vs the full dataset (response length, calculation instructions) and
    coverage. DIR is replaced as a whole when it already holds a report.

    \b
    Example:
      selectit report --dataset alpaca --out report --top 0.2
      selectit report --dataset alpaca --out report-2 --models smollm2-135m --alpha 0.5
    """
    from selectit.report import build_report

    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    result = build_report(ctx.obj["db_url"], dataset, out, models=names, prompt_set=prompt_set, alpha=alpha,
                          formula=formula, top=top)  # fmt: skip
    click.echo(
        f"Report: {result.index} ({len(result.pngs)} plots; {result.n_rankable} of {result.n_samples} samples "
        f"rankable, {result.n_selected} selected)."
    )


def _scope_options(func: F) -> F:
    func = click.option("--prompt-set", default=None, metavar="SET",
                        help="Only this prompt set [default: every active set].")(func)
    func = click.option("--model", "-m", default=None, metavar="NAME",
                        help="Only this model (its active version) [default: every active model].")(func)
    func = click.option("--dataset", "-d", default=None, metavar="NAME",
                        help="Only the samples of this dataset [default: every dataset].")(func)
    return func


@main.command()
@_scope_options
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1),
              help="Samples per committed batch (a kill loses at most one batch).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.pass_context
@handles_errors
def score(ctx: click.Context, dataset: str | None, model: str | None, prompt_set: str | None,
          batch_size: int, quiet: bool) -> None:
    """Score the missing (sample, model, prompt) cells here, in this process.

    Only cells never scored (or failed, below the attempt limit) are computed, through the same
    job code the Celery workers run. Ctrl-C is safe: what was written stays written and a rerun
    continues; a run killed outright is taken over by the next one.

    \b
    Example:
      selectit score --dataset alpaca --model smollm2
      selectit score              # every dataset × active model × active prompt set
    """
    from selectit.jobs import score_in_process

    summary = score_in_process(store(ctx), dataset=dataset, model=model, prompt_set=prompt_set,
                               progress=not quiet, batch_size=batch_size)
    line = (f"scored {summary.scored} cells, failed {summary.failed}, "
            f"skipped {summary.skipped} already scored")
    if summary.interrupted:
        err_console.print(f"interrupted: {line}. Run the same command again to continue.")
        ctx.exit(130)
    console.print(line + ".")
    if summary.failed:
        console.print("Failed cells are retried by the next `selectit score`; `selectit status` lists them.")


@main.command()
@_scope_options
@click.option("--enqueue/--no-enqueue", default=True, show_default=True,
              help="Send the new jobs to the broker ($SELECTIT_BROKER_URL).")
@click.pass_context
@handles_errors
def plan(ctx: click.Context, dataset: str | None, model: str | None, prompt_set: str | None,
         enqueue: bool) -> None:
    """Turn the missing cells into jobs and send them to the workers' queues now.

    The beat scheduler does the same every $SELECTIT_PLAN_INTERVAL seconds; planning twice never
    puts a cell in two jobs.

    \b
    Example:
      export SELECTIT_DATABASE_URL=postgresql://selectit@db/selectit
      selectit plan --model smollm2
    """
    from selectit.jobs import plan as plan_jobs

    engine = store(ctx)
    ids = plan_jobs(engine, dataset=dataset, model=model, prompt_set=prompt_set)
    sent = 0
    if enqueue and ids:
        try:
            from workers.app import send_jobs

            sent = send_jobs(ids, engine)
        except Exception as exc:  # noqa: BLE001 - kombu raises many kinds
            raise UserError(f"planned {len(ids)} job(s), but sending them to the broker failed: {exc}. "
                            "They stay queued in the database; start Redis (or set $SELECTIT_BROKER_URL) "
                            "and run `selectit plan` again, or let the beat scheduler re-send them.") from exc
    console.print(f"planned {len(ids)} new job(s), sent {sent} to the broker.")


@main.command()
@click.option("--model", "-m", "models", multiple=True, metavar="NAME",
              help="Serve this model's queue (repeatable). Without it: only the control queue.")
@click.option("--concurrency", "-c", default=1, show_default=True, type=click.IntRange(1),
              help="Tasks run at once (keep 1 per GPU).")
@click.option("--pool", default="solo", show_default=True, type=click.Choice(["solo", "prefork"]),
              help="solo for a GPU (a CUDA model cannot be forked); prefork for several CPU processes.")
@click.option("--control/--no-control", default=True, show_default=True,
              help="Also run the bookkeeping tasks (plan, requeue_expired) of the beat scheduler.")
@click.pass_context
@handles_errors
def worker(ctx: click.Context, models: tuple[str, ...], concurrency: int, pool: str, control: bool) -> None:
    """Start a Celery worker bound to a model's queue ($SELECTIT_BROKER_URL).

    \b
    Example:
      export SELECTIT_DATABASE_URL=postgresql://selectit@db/selectit
      export SELECTIT_BROKER_URL=redis://:secret@queue:6379/0
      selectit worker --model smollm2
    """
    import os

    from selectit.jobs import JobError
    from selectit.schema import LLM

    engine = store(ctx)
    with db.session_scope(engine) as session:
        import sqlalchemy as sa

        known = set(session.scalars(sa.select(LLM.name).where(LLM.active.is_(True))))
    for name in models:
        if name not in known:
            raise JobError(f"no active model named {name!r} (models: {', '.join(sorted(known)) or 'none'}). "
                           f"Run `selectit model add {name} --source DIR|FILE.gguf` first.")
    if ctx.obj["db_url"]:
        os.environ[db.URL_ENV] = ctx.obj["db_url"]  # the worker's tasks open the same database
    from workers.app import CONTROL_QUEUE, app, queue_for

    queues = [queue_for(m) for m in models] + ([CONTROL_QUEUE] if control or not models else [])
    node = f"{'+'.join(models) or 'control'}@%h"
    app.worker_main(["worker", "-Q", ",".join(queues), "--pool", pool, "--concurrency", str(concurrency),
                     "-n", node, "--loglevel", "INFO"])


def _print_scoring_status(engine) -> None:  # noqa: ANN001
    from selectit.jobs import status_rows

    rows = status_rows(engine)
    if not rows:
        return
    print_table("scoring (per model × prompt set)",
                ["model", "prompt set", "done", "missing", "failed", "queued", "running", "expired",
                 "failed jobs", "cells/min (10 min)"],
                [(r.model, r.prompt_set, r.done, r.missing, r.failed, r.queued, r.running, r.expired,
                  r.failed_jobs, r.cells_per_min) for r in rows])


def print_table(title: str | None, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, justify="right" if name in NUMERIC_COLUMNS else "left")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


NUMERIC_COLUMNS = {"samples", "done", "missing", "failed", "queued", "running", "expired", "rank", "score",
                   "failed jobs", "cells/min (10 min)"}


def run() -> None:  # pragma: no cover - console entry point
    main(prog_name="selectit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
