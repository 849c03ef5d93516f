"""The command line's frame: the `selectit` group, one `Store` per invocation, output that is safe on a
terminal and exact in a pipe, and one `Error:` line for every error the library raises."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from selectit import api  # the front door: the database URL check and the drivers' errors too

F = TypeVar("F", bound=Callable[..., Any])


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def for_terminal(text: str) -> str:
    """`text` with control characters (C0 but newline and tab, DEL, C1, line/paragraph separators,
    bidi overrides) written as escapes, so stored data cannot drive the terminal (retitle it,
    clear it, reorder a line). Files and pipes get the exact text instead.

    >>> for_terminal("a\x1b]0;title\x07b")
    'a\\x1b]0;title\\x07b'
    """
    def escape(found: re.Match[str]) -> str:
        code = ord(found.group(0))
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return _CONTROL.sub(escape, text)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _PlainConsole(Console):
    """A rich console that prints every string as it is: no markup (`[/INST]` in a LLaMA-2
    prompt is text, not a closing tag), no `:emoji:` codes, control characters escaped on a terminal."""

    def render_str(self, text: str, **kwargs: Any) -> Any:  # noqa: ANN401 - rich's Text
        return super().render_str(for_terminal(text) if self.is_terminal else text, **kwargs)


# Off a terminal (pipes, CI logs) rich would wrap tables at 80 columns; give them room.
console = _PlainConsole(width=None if sys.stdout.isatty() else 120, markup=False, emoji=False)


err_console = _PlainConsole(stderr=True, markup=False, emoji=False)


def echo(text: Any = "", err: bool = False) -> None:
    """`click.echo`, with control characters escaped when the stream is a terminal and the exact
    text (escape sequences included, which click would strip) in files and pipes."""
    text = str(text)
    click.echo(for_terminal(text) if _is_terminal(sys.stderr if err else sys.stdout) else text, err=err, color=True)


class UserError(click.ClickException):
    """An error the user can fix; printed as `Error: …` with exit code 1."""

    def format_message(self) -> str:
        return for_terminal(self.message) if _is_terminal(sys.stderr) else self.message


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def explain_store_error(exc: BaseException, url: str | None) -> str | None:
    """What a driver's error says about the database, in one line (see `api.explain_error`)."""
    return api.explain_error(exc, url)


def handles_errors(func: F) -> F:
    """Turn the library's and the drivers' errors into one clean `Error: …` line (no traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from selectit.errors import SelectitError

        try:
            return func(*args, **kwargs)
        except (SelectitError, api.DriverError) as exc:
            ctx = click.get_current_context(silent=True)
            url = ctx.find_root().obj.get("db_url") if ctx and ctx.find_root().obj else None
            message = explain_store_error(exc, url) if not isinstance(exc, SelectitError) else None
            raise UserError(_one_line(message or str(exc))) from exc
        except ImportError as exc:
            from selectit.errors import missing_extra

            missing = missing_extra(exc)
            if missing is None:
                raise
            raise UserError(str(missing)) from exc
        except OSError as exc:  # a file that cannot be written: no permission, a full disk
            if exc.strerror is None:
                raise
            ctx = click.get_current_context(silent=True)
            target = exc.filename if exc.filename is not None else (ctx.params.get("out") if ctx else None)
            where = f"{os.fsdecode(target)}: " if target is not None else ""
            raise UserError(_one_line(f"{where}{exc.strerror}")) from exc

    return wrapper  # type: ignore[return-value]


def _checked_url(url: str | None) -> str | None:
    """`--db` / $SELECTIT_DATABASE_URL as given, refusing what no command could open."""
    try:
        api.check_url(url)
    except api.StoreError as exc:
        raise UserError(str(exc)) from None
    return url


class _Utf8Group(click.Group):
    """The command group, refusing arguments that are not UTF-8 (a file name in another encoding
    arrives as lone surrogates, which no database, file or terminal can take)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        for arg in args:
            try:
                arg.encode("utf-8")
            except UnicodeEncodeError:
                raise UserError(f"the argument {os.fsencode(arg)!r} is not valid UTF-8; rename the file, "
                                f"or give names and text in UTF-8") from None
        return super().parse_args(ctx, args)


@click.group(cls=_Utf8Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--db",
    "db_url",
    envvar=api.URL_ENV,
    default=None,
    metavar="URL",
    help=f"SQLAlchemy database URL [env {api.URL_ENV}; default sqlite:///selectit.db].",
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
    ctx.obj["db_url"] = _checked_url(db_url)


def store(ctx: click.Context):  # noqa: ANN201 - a selectit.api.Store
    """The library's `Store` on the command's database, opened once per invocation."""
    root = ctx.find_root()
    if "store" not in root.obj:
        from selectit.api import Store

        default = api.default_store_file(root.obj["db_url"])  # neither --db nor $SELECTIT_DATABASE_URL
        existed = default is not None and default.exists()
        root.obj["store"] = Store(root.obj["db_url"])
        root.call_on_close(root.obj["store"].close)
        if default is not None:  # a store nobody named: say which, so a command in another directory is no surprise
            echo(f"{'using' if existed else 'created'} the store {default.resolve()} (--db or $SELECTIT_DATABASE_URL "
                 f"to use another)", err=True)
    return root.obj["store"]


def _warn(text: str | None) -> None:
    if text:
        echo(f"Warning: {text}", err=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def print_table(title: str | None, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, justify="right" if name in NUMERIC_COLUMNS else "left")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


NUMERIC_COLUMNS = {"samples", "done", "missing", "failed", "queued", "running", "stalled", "rank", "score",
                   "failed jobs", "cells/min (1 min)", "cells/min (10 min)", "of earlier turns"}
