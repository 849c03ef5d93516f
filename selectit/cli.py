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
