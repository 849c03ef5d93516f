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


def print_table(title: str | None, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, justify="right" if name in NUMERIC_COLUMNS else "left")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


NUMERIC_COLUMNS = {"samples", "done", "missing", "failed", "queued", "running", "expired", "rank", "score"}


def run() -> None:  # pragma: no cover - console entry point
    main(prog_name="selectit")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
