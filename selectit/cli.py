"""The `selectit` command line: a thin click layer over the library modules.

Every command's help ends with a runnable example; errors say what to do next and exit 1.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from selectit.store import db
from selectit.contract import DEFAULT_ALPHA, DEFAULT_FORMULA, DEFAULT_PROMPT_SET, DEFAULT_TOP, EXPORT_FORMATS, Formula

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
    """What a driver's error says about the database, in one line (see `db.explain_error`)."""
    return db.explain_error(exc, url)


def handles_errors(func: F) -> F:
    """Turn the library's and the drivers' errors into one clean `Error: …` line (no traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from selectit.errors import SelectitError

        try:
            return func(*args, **kwargs)
        except (SelectitError, db.DriverError) as exc:
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
        db.check_url(url)
    except db.StoreError as exc:
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
    ctx.obj["db_url"] = _checked_url(db_url)


def store(ctx: click.Context):  # noqa: ANN201 - a selectit.api.Store
    """The library's `Store` on the command's database, opened once per invocation."""
    root = ctx.find_root()
    if "store" not in root.obj:
        from selectit.api import Store

        root.obj["store"] = Store(root.obj["db_url"])
        root.call_on_close(root.obj["store"].close)
    return root.obj["store"]


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
    record is kept as it was, for `export --format original`.

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
@click.pass_context
@handles_errors
def status(ctx: click.Context) -> None:
    """Show what the store holds: samples per dataset and distinct samples in all.

    \b
    Example:
      selectit status
    """
    status = store(ctx).status()
    print_table("samples", ["dataset", "samples"], status.samples_per_dataset)
    console.print(f"distinct samples stored: {status.distinct_samples}")
    _print_scoring_status(status.scoring, store(ctx))
    _print_control_ticks(status.control_ticks)


def _fusion_options(func: F) -> F:
    """--models, --prompt-set, --alpha, --formula, --weights: what the fusion views compute with.

    Shared by rank, select, export, report and sql; the defaults are `selectit.fusion`'s.
    """
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
    ]):
        func = option(func)
    return func


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


def _warn(text: str | None) -> None:
    if text:
        echo(f"Warning: {text}", err=True)


def _parse_models(models: str | None) -> list[str] | None:
    if models is None:
        return None
    names = [m.strip() for m in models.split(",") if m.strip()]
    if not names:
        raise click.BadParameter(f"{models!r} names no model; write e.g. --models smol,gemma", param_hint="--models")
    if len(set(names)) != len(names):
        raise click.BadParameter(f"{models!r} names a model twice", param_hint="--models")
    return names


def _fusion_args(models: str | None, prompt_set: str | None, alpha: float, formula: str,
                 weights: str | None) -> dict[str, Any]:
    """The fusion options as `Store` keyword arguments."""
    return {"models": _parse_models(models), "prompt_set": prompt_set, "alpha": alpha, "formula": formula,
            "weights": _parse_weights(weights)}


@main.command()
@click.option("--dataset", "-d", required=True, help="The dataset to report on.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Directory for index.html and the plots.")
@_fusion_options
@_top_option("Share of the ranking that counts as selected (rounded down, at least one).")
@click.pass_context
@handles_errors
def report(ctx: click.Context, dataset: str, out: str, models: str | None, prompt_set: str | None,
           alpha: float, formula: str, weights: str | None, top: float) -> None:  # fmt: skip
    """Write an HTML report with plots (and the numbers behind them) for a scored dataset.

    Score distributions per model and per prompt, agreement between prompts and between models,
    the selected top share vs the full dataset (response length, calculation instructions) and
    coverage. A rerun into the same DIR replaces only the files the previous report wrote (listed in
    DIR/.selectit-manifest.json); anything else in DIR is left alone.

    \b
    Example:
      selectit report --dataset alpaca --out report --top 0.2
      selectit report --dataset alpaca --out report-2 --models smollm2,gemma --weights smollm2=1,gemma=2
    """
    result = store(ctx).report(dataset, out, top=top, **_fusion_args(models, prompt_set, alpha, formula, weights))
    echo(
        f"Report: {result.index} ({len(result.pngs)} plots; {result.n_rankable} of {result.n_samples} samples "
        f"rankable, {result.n_selected} selected)."
    )
    _print_health_warnings(ctx, dataset, **_fusion_args(models, prompt_set, alpha, formula, weights))


def _scope_options(func: F) -> F:
    func = click.option("--prompt-set", default=None, metavar="SET",
                        help="Only this prompt set [default: every active set].")(func)
    func = click.option("--model", "-m", default=None, metavar="NAME",
                        help="Only this model (its active version) [default: every active model].")(func)
    func = click.option("--dataset", "-d", default=None, metavar="NAME",
                        help="Only the samples of this dataset [default: every dataset].")(func)
    return func


def _engine_options(func: F) -> F:
    """--engine and its options (selectit.scoring.engines): a value for `score`, the environment for `worker`."""
    from selectit.scoring.engines import engine_names

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


def _engine_choice(given: dict[str, Any]):  # noqa: ANN202 - selectit.scoring.engines.EngineOptions
    """The given engine options over the environment's, checked."""
    import dataclasses

    from selectit.scoring.engines import EngineOptions

    options = dataclasses.replace(EngineOptions.from_env(), **{k: v for k, v in given.items() if v is not None})
    if options.engine == "vllm":
        from selectit.scoring.engines import require_vllm

        require_vllm()
    return options


@main.command()
@_scope_options
@_engine_options
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1),
              help="Samples per committed batch (a kill loses at most one batch).")
@click.option("--concurrency", type=click.IntRange(1), default=None, metavar="N",
              help="openai engine: requests in flight at once [32].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--estimate", is_flag=True,
              help="Only print what scoring would cost (cells, prompt tokens, forwards, time); score and write nothing.")
@click.option("--verbose", "-v", is_flag=True,
              help="Print where the command's time went: start-up, store, model load, scoring, DB writes.")
@click.pass_context
@handles_errors
def score(ctx: click.Context, dataset: str | None, model: str | None, prompt_set: str | None,
          batch_size: int, quiet: bool, estimate: bool, verbose: bool, **engine_options: Any) -> None:
    """Score the missing (sample, model, prompt) cells here, in this process.

    Only cells never scored (or failed, below the attempt limit) are computed, through the same
    job code the Celery workers run. Ctrl-C is safe: what was written stays written and a rerun
    continues; a run killed outright is taken over by the next one.

    \b
    Example:
      selectit score --dataset alpaca --model smollm2
      selectit score              # every dataset × active model × active prompt set
      selectit score --model llama2-70b --engine vllm --tensor-parallel-size 4
      selectit score --dataset alpaca --estimate   # the cost first: tokens, forwards, time
      selectit score -v           # and where the time went
      selectit score --model served-llama --concurrency 64 --batch-size 64
    """
    import time

    from selectit import timing

    if estimate:
        _print_estimates(ctx, dataset, model, prompt_set, engine_options.get("engine"))
        return
    t0, started = time.perf_counter(), timing.process_age()
    if started is not None:
        timing.PHASES["start-up and imports"] = started
    options = _engine_choice(engine_options)
    with timing.phase("store"):
        opened = store(ctx)
    with _ScoringBar(enabled=not quiet) as bar:
        summary = opened.score(dataset=dataset, model=model, prompt_set=prompt_set, progress=bar,
                               batch_size=batch_size, engine=options)
    line = (f"scored {summary.scored} cells, failed {summary.failed}, "
            f"skipped {summary.skipped} already scored")
    if summary.interrupted:
        err_console.print(f"interrupted: {line}. Run the same command again to continue.")
        ctx.exit(130)
    console.print(line + ".")
    if summary.failed:
        console.print("Failed cells are retried by the next `selectit score`; `selectit status` lists them.")
    if verbose:
        total = time.perf_counter() - t0 + (started or 0.0)
        console.print(f"time: {total:.2f} s in all" + ("" if started is not None else " (start-up not known here)"),
                      highlight=False)
        for text in timing.breakdown(total):
            console.print(text, highlight=False, markup=False)


def _print_estimates(ctx: click.Context, dataset: str | None, model: str | None, prompt_set: str | None,
                     engine: str | None) -> None:
    """`score --estimate` / `plan --dry-run`: the cost per model version, one line each."""
    estimates = store(ctx).estimate(dataset=dataset, model=model, prompt_set=prompt_set, engine=engine)
    for e in estimates:
        echo(e.line())
    echo("Nothing was scored or written (estimate only).")


class _ScoringBar:
    """`selectit score`'s progress bar (cells, cells/s, ETA), drawn from the runner's reports."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None

    def __enter__(self) -> _ScoringBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def start(self, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        import time

        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                                   TimeRemainingColumn)

        self._bar = Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                             TextColumn("{task.fields[rate]} cells/s"), TimeRemainingColumn(), console=console)
        self._task = self._bar.add_task("scoring", total=total, rate="–")
        self._clock, self._t0, self._done = time.monotonic, time.monotonic(), 0
        self._bar.start()

    def advance(self, cells: int) -> None:
        if self._bar is not None:
            self._done += cells
            rate = self._done / max(self._clock() - self._t0, 1e-9)
            self._bar.update(self._task, advance=cells, rate=f"{rate:.1f}")

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)


@main.command()
@_scope_options
@click.option("--enqueue/--no-enqueue", default=True, show_default=True,
              help="Send the new jobs to the broker ($SELECTIT_BROKER_URL).")
@click.option("--dry-run", is_flag=True,
              help="Only print what scoring would cost (cells, prompt tokens, forwards, time); plan and write nothing.")
@click.pass_context
@handles_errors
def plan(ctx: click.Context, dataset: str | None, model: str | None, prompt_set: str | None,
         enqueue: bool, dry_run: bool) -> None:
    """Turn the missing cells into jobs and send them to the workers' queues now.

    The beat scheduler does the same every $SELECTIT_PLAN_INTERVAL seconds; planning twice never
    puts a cell in two jobs.

    \b
    Example:
      export SELECTIT_DATABASE_URL=postgresql://selectit@db/selectit
      selectit plan --model smollm2
      selectit plan --dry-run      # the cost first: tokens, forwards, time per model
    """
    if dry_run:
        _print_estimates(ctx, dataset, model, prompt_set, None)
        return
    result = store(ctx).plan(dataset=dataset, model=model, prompt_set=prompt_set, enqueue=enqueue)
    console.print(f"planned {result.planned} new job(s), sent {result.sent} to the broker"
                  + (f"; re-sent {result.resent} queued job(s) whose queue was empty." if result.resent else "."))


@main.command()
@_engine_options
@click.option("--model", "-m", "models", multiple=True, metavar="NAME",
              help="Serve this model's queue (repeatable). Without it: only the control queue.")
@click.option("--concurrency", "-c", default=None, type=click.IntRange(1),
              help="Tasks run at once (keep 1 per GPU) [1]; with --engine openai: requests in flight [32], "
                   "one task at a time.")
@click.option("--pool", default="solo", show_default=True, type=click.Choice(["solo", "prefork"]),
              help="solo for a GPU (a CUDA model cannot be forked); prefork for several CPU processes.")
@click.option("--control/--no-control", default=True, show_default=True,
              help="Also keep the fleet's clock: requeue expired leases and plan new cells on schedule, "
                   "on a thread of this worker (one worker of the fleet does each tick).")
@click.pass_context
@handles_errors
def worker(ctx: click.Context, models: tuple[str, ...], concurrency: int | None, pool: str, control: bool,
           **engine_options: Any) -> None:
    """Start a Celery worker bound to a model's queue ($SELECTIT_BROKER_URL).

    With --control (the default) the worker also requeues a dead worker's job and plans new
    datasets on schedule ($SELECTIT_REQUEUE_INTERVAL, $SELECTIT_PLAN_INTERVAL), on a thread of
    its own, while it scores: no separate control worker or beat is needed. Celery runs
    --without-gossip --without-mingle: workers need nothing from each other (jobs are claimed in
    the database), and gossip raised AttributeError on every Redis restart.

    \b
    Example:
      export SELECTIT_DATABASE_URL=postgresql://selectit@db/selectit
      export SELECTIT_BROKER_URL=redis://:secret@queue:6379/0
      selectit worker --model smollm2
      selectit worker --model llama2-70b --engine vllm --tensor-parallel-size 4
      selectit worker --model served-llama --engine openai --concurrency 64
    """
    import os

    # The worker's tasks read the engine options from the environment: Celery starts them.
    options = _engine_choice(engine_options)
    if options.engine == "openai":  # the requests run concurrently inside one task
        if concurrency is not None:
            options = _engine_choice({**engine_options, "concurrency": concurrency})
        concurrency = 1
    options.export()
    store(ctx).require_models(models)
    if ctx.obj["db_url"]:
        os.environ[db.URL_ENV] = ctx.obj["db_url"]  # the worker's tasks open the same database
    from selectit.workers.app import CONTROL_QUEUE, app, queue_for

    queues = [queue_for(m) for m in models] + ([CONTROL_QUEUE] if control or not models else [])
    node = f"{'+'.join(models) or 'control'}@%h"
    app.worker_main(["worker", "-Q", ",".join(queues), "--pool", pool, "--concurrency", str(concurrency or 1),
                     "-n", node, "--loglevel", "INFO", "--without-gossip", "--without-mingle"])


@main.group("model")
def model_group() -> None:
    """Register LLMs that rate the samples (see `selectit models`).

    \b
    Example:
      selectit model add smol --source smollm2-135m
    """


@model_group.command("add")
@click.argument("name")
@click.option("--source", default=None, metavar="HUB_ID|DIR|FILE.gguf",
              help="A hub id (from the local cache), a model directory, a .gguf file, "
                   "or an alias: smollm2-135m, gemma3-270m.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16", "int8"]), default=None,
              help="Weights dtype, part of the model version; int8 = linear layers quantised to int8 (CPU only) "
                   "[default: bfloat16 on a GPU or a CPU with native bf16, else float32].")
@click.option("--weight", type=float, default=None, metavar="θ",
              help="Model-level weight [default: the parameter count].")
@click.option("--max-tokens", type=int, default=None, metavar="N",
              help="Context used for truncation [default: 4096, capped by the model's own].")
@click.option("--endpoint", default=None, metavar="URL",
              help="Instead of --source: the model is served by this OpenAI-compatible server, e.g. "
                   "http://10.0.0.5:8000/v1 (scored with the openai engine).")
@click.option("--served-model", default=None, metavar="ID",
              help="With --endpoint: the model id the server serves (see its /v1/models).")
@click.option("--tokenizer", default=None, metavar="DIR|HUB_ID|FILE.gguf",
              help="With --endpoint: the served model's tokenizer, for label ids, truncation and token "
                   "counts [default: --served-model as a hub id in the local cache].")
@click.option("--api-key-env", default=None, metavar="VAR",
              help="With --endpoint: the environment variable holding the API key (read at run time, never "
                   "stored).")
@click.option("--params", "n_params", type=int, default=None, metavar="N",
              help="With --endpoint: the served model's parameter count, its θ unless --weight is given "
                   "(a server does not report it).")
@click.pass_context
@handles_errors
def model_add(ctx: click.Context, name: str, source: str | None, dtype: str | None, weight: float | None,
              max_tokens: int | None, endpoint: str | None, served_model: str | None, tokenizer: str | None,
              api_key_env: str | None, n_params: int | None) -> None:
    """Register model NAME, or a new version of it (other weights or dtype, or another deployment).

    Loads the tokenizer and config (not the weights), derives the token ids of the labels 1..9,
    counts the parameters and fingerprints the weights. Adding the same weights and dtype again
    changes nothing; other weights or another dtype make a new version and deactivate the old one.

    With --endpoint the model is served by an OpenAI-compatible server (vLLM, SGLang, TGI,
    llama.cpp, a hosted API): its version is the served model id plus what the server's
    /v1/models says of it; θ comes from --weight or --params (without either the model cannot
    join a model-level fusion with other models).

    \b
    Example:
      selectit model add smol --source smollm2-135m --dtype float32
      selectit model add gemma --source gemma3-270m
      selectit model add smol8 --source smollm2-135m --dtype int8
      selectit model add llama --endpoint http://10.0.0.5:8000/v1 --served-model meta-llama/Llama-2-7b-hf \\
          --tokenizer ./Llama-2-7b-hf --params 6738415616 --api-key-env LLAMA_API_KEY
    """
    from selectit.scoring import loading

    served = {"--served-model": served_model, "--tokenizer": tokenizer, "--api-key-env": api_key_env,
              "--params": n_params}
    if (source is None) == (endpoint is None):
        raise UserError("give either --source (a local model) or --endpoint with --served-model (a served model)")
    if endpoint is None and any(v is not None for v in served.values()):
        given = ", ".join(k for k, v in served.items() if v is not None)
        raise UserError(f"{given} go with --endpoint (a served model), not with --source")
    if endpoint is not None and (served_model is None or dtype is not None):
        raise UserError("--endpoint needs --served-model ID" if served_model is None else
                        "--dtype does not apply to a served model (the server chooses it)")
    warning = loading.half_precision_warning(dtype) if dtype else None
    if warning:
        err_console.print(warning, highlight=False, markup=False)
    if endpoint is not None:
        m = store(ctx).add_served_model(name, endpoint, served_model, tokenizer=tokenizer, api_key_env=api_key_env,
                                        weight=weight, n_params=n_params, max_tokens=max_tokens)
    else:
        m = store(ctx).add_model(name, source, dtype=dtype, weight=weight, max_tokens=max_tokens)
    word = "added" if m.added else "unchanged"
    if m.endpoint:
        theta = (f"θ {m.weight:g}" if m.weight is not None else f"{m.n_params:,} parameters"
                 if m.n_params is not None else "no θ (give --weight or --params to fuse it with other models)")
        console.print(f"model {m.name} {word}: version {m.id}, {m.served_model} served at {m.endpoint}, {theta}, "
                      f"deployment {m.fingerprint[:12]}…")
        return
    console.print(f"model {m.name} {word}: version {m.id}, {m.dtype}, {m.n_params:,} parameters, "
                  f"weights {m.fingerprint[:12]}…")


@main.command()
@click.pass_context
@handles_errors
def models(ctx: click.Context) -> None:
    """List model versions: id, name, dtype, parameters, weight, active, source.

    \b
    Example:
      selectit models
    """
    rows = [(m.id, m.name, m.dtype, f"{m.n_params:,}" if m.n_params is not None else "",
             m.weight if m.weight is not None else "", "yes" if m.active else "no",
             f"{m.served_model} at {m.endpoint}" if m.endpoint else m.source) for m in store(ctx).models()]
    print_table(None, ["id", "name", "dtype", "params", "weight", "active", "source"], rows)


@main.group("prompts", invoke_without_command=True)
@click.pass_context
@handles_errors
def prompts_group(ctx: click.Context) -> None:
    """List prompt sets: layout, scale, active prompts and all versions.

    The built-in set `default` (shared-context layout, 5 prompts, scale 1-5) is created by
    `selectit init`.

    \b
    Example:
      selectit prompts
      selectit prompts import prompts.txt --set ref --layout reference --first 5
    """
    if ctx.invoked_subcommand is not None:
        return
    rows = store(ctx).prompt_sets()
    print_table(None, ["set", "layout", "scale", "active", "versions"], rows)


@prompts_group.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--set", "set_name", required=True, help="The prompt set to create or update.")
@click.option("--layout", type=click.Choice(["reference", "shared-context"]), required=True,
              help="reference: the authors' layout, a line is the prompt; shared-context: a line is a template "
                   "with {instruction} {input} {output} (\\n for line breaks) ending with ': '.")
@click.option("--first", type=int, default=None, metavar="K", help="Use only the first K lines.")
@click.option("--scale", type=int, default=5, show_default=True, help="Labels 1..SCALE (2 to 9).")
@click.pass_context
@handles_errors
def prompts_import(ctx: click.Context, file: str, set_name: str, layout: str, first: int | None, scale: int) -> None:
    """Make the lines of FILE the prompts of a set (one prompt per line).

    A changed line makes a new prompt version and deactivates the old one; unchanged lines keep
    their version (and their scores).

    \b
    Example:
      selectit prompts import reference_rating_prompts.txt --set reference --layout reference --first 5
    """
    ids = store(ctx).import_prompts(file, set_name, layout, first=first, scale=scale)
    console.print(f"prompt set {set_name}: {len(ids)} active prompts ({layout}, scale {scale}), "
                  f"versions {', '.join(map(str, ids))}")


def _print_scoring_status(rows: list[Any], api_store: Any = None) -> None:
    if not rows:
        return
    print_table("scoring (per model × prompt set)",
                ["model", "prompt set", "done", "missing", "failed", "queued", "running", "expired",
                 "failed jobs", "cells/min (10 min)", "done by engine"],
                [(r.model, r.prompt_set, r.done, r.missing, r.failed, r.queued, r.running, r.expired,
                  r.failed_jobs, r.cells_per_min, ", ".join(f"{e} {n}" for e, n in r.by_engine) or "–")
                 for r in rows])
    if api_store is None:
        return
    words = api_store.health_words(sorted({r.prompt_set for r in rows if r.done}))
    missing: dict[int, int] = {}
    for r in rows:
        missing[r.model_id] = missing.get(r.model_id, 0) + r.missing
    left = api_store.time_left(missing)
    print_table("rater health (see selectit diagnose) and time left",
                ["model", "prompt set", "health", "time left (all sets)"],
                [(r.model, r.prompt_set, words.get((r.model, r.prompt_set), "–"), left[r.model_id]) for r in rows])


def _print_control_ticks(ticks: list[Any]) -> None:
    if ticks:
        print_table("control ticks of the worker fleet (last run, UTC)",
                    ["tick", "last run", "worker", "seconds", "runs", "last error"],
                    [(t.name, f"{t.started_at:%Y-%m-%d %H:%M:%S}", t.worker, f"{t.seconds:.2f}", t.runs,
                      f"{t.error} (at {t.failed_at:%H:%M:%S})" if t.error else "–") for t in ticks])


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


def _print_coverage(cov, params) -> None:  # noqa: ANN001
    shares = {m.model_id: m.share for m in params.models}
    print_table(f"coverage of {cov.dataset} (prompt set {params.prompt_set}, {len(params.prompts)} prompts)",
                ["model", "θ share", "ok", "missing", "failed"],
                [(m.model, f"{shares[m.model_id]:.4f}", m.ok, m.missing, m.failed) for m in cov.models])
    line = f"rankable: {cov.n_rankable} of {cov.n_samples} samples"
    if cov.n_not_rankable:
        line += (f" ({cov.n_not_rankable} not rankable: {cov.samples_with_missing} with missing cells, "
                 f"{cov.samples_with_failed} with failed cells)")
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
def rank(ctx: click.Context, dataset: str, models: str | None, prompt_set: str | None, alpha: float, formula: str,
         weights: str | None, top: float | None, top_n: int | None, min_score: float | None, limit: int,
         require_complete: bool) -> None:
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
    summary = store(ctx).rank_summary(dataset, top=top, top_n=top_n, min_score=min_score, limit=limit,
                                      require_complete=require_complete,
                                      **_fusion_args(models, prompt_set, alpha, formula, weights))
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
    _print_health_warnings(ctx, dataset, **_fusion_args(models, prompt_set, alpha, formula, weights))


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
@_require_complete_option
@click.pass_context
@handles_errors
def select(ctx: click.Context, name: str, dataset: str, models: str | None, prompt_set: str | None, alpha: float,
           formula: str, weights: str | None, top: float | None, top_n: int | None, min_score: float | None,
           random_share: float | None, seed: int, by: str, require_complete: bool) -> None:
    """Freeze the current top of a dataset's ranking as the selection NAME.

    The ranks, sample ids, scores and parameters are stored, so `selectit export --selection NAME`
    writes the same bytes later, whatever is ingested or scored meanwhile. Names are never reused.

    Controls for an honest ablation come from the same rankable samples with the same size rule,
    and are frozen and exported the same way (their card says how they were drawn): --random
    SHARE (a seeded hash of each sample's content, so every store draws the same ids) and --by
    length (the longest responses).

    \b
    Example:
      selectit select selective-alpaca-v1 --dataset alpaca --top 0.2
      selectit export --selection selective-alpaca-v1 --out selective_alpaca.json
      selectit select random-20 --dataset alpaca --random 0.2 --seed 1
      selectit select longest-20 --dataset alpaca --by length --top 0.2
      selectit select full-only --dataset alpaca --top 0.2 --require-complete
    """
    info = store(ctx).select(name, dataset, top=top, top_n=top_n, min_score=min_score, random=random_share,
                             seed=seed, by=by, require_complete=require_complete,
                             **_fusion_args(models, prompt_set, alpha, formula, weights))
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
def export(ctx: click.Context, selection: str | None, dataset: str | None, models: str | None,
           prompt_set: str | None, alpha: float, formula: str, weights: str | None, top: float | None,
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
                               with_scores=with_scores, llamafactory=llamafactory, card=card, top=top,
                               top_n=top_n, min_score=min_score, overwrite=overwrite, card_paths=card_paths,
                               require_complete=require_complete,
                               **_fusion_args(models, prompt_set, alpha, formula, weights))
    what = f"selection {selection}" if selection else f"{dataset}"
    if result.note:
        echo(result.note, err=True)
    _warn(result.warning)
    shown = f"original {result.format}" if (fmt or "original") == "original" and not result.note else result.format
    echo(f"wrote {result.n} samples of {what} to {result.data} ({shown}).")
    for extra in (result.card, result.dataset_info):
        if extra is not None:
            echo(f"wrote {extra}")
    _print_health_warnings(ctx, dataset, selection=selection, **_fusion_args(models, prompt_set, alpha, formula,
                                                                             weights))


def _print_health_warnings(ctx: click.Context, dataset: str | None, *, selection: str | None = None,
                           **fusion_options: Any) -> None:
    """The rater health warnings on stderr, one line each (never changes the exit code)."""
    from selectit.errors import SelectitError

    try:
        lines = store(ctx).health_warnings(dataset or "", selection=selection, **fusion_options)
    except SelectitError as exc:  # the command itself already succeeded: say why there is no check
        lines = [f"rater health not checked: {_one_line(str(exc))}"]
    for line in lines:
        echo(f"warning: {line}", err=True)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


@main.command()
@click.option("--dataset", "-d", required=True, help="The dataset whose ratings to check.")
@click.option("--models", default=None, metavar="A,B", help="Comma-separated model names [default: every active model].")
@click.option("--prompt-set", default=None, metavar="SET", help=f"Prompt set [default: {DEFAULT_PROMPT_SET}].")
@click.option("--format", "fmt", default="table", show_default=True, type=click.Choice(["table", "json"]),
              help="A table and the warnings, or JSON (rows, warnings, thresholds).")
@click.pass_context
@handles_errors
def diagnose(ctx: click.Context, dataset: str, models: str | None, prompt_set: str | None, fmt: str) -> None:
    """Check the raters: can their ratings of a dataset be trusted?

    Per model (and per prompt): the label mass (how much probability the rater puts on the label
    digits at all; median and 10th percentile), the mean max P' (decisiveness), the share of cells
    with the most common S_base (collapse), the share of truncated cells, and Spearman ρ between
    the model's prompts, between models and with the response length. A figure past its threshold
    (README: "Can I trust these ratings?") prints a warning naming the rater and what to do.

    \b
    Example:
      selectit diagnose --dataset alpaca
      selectit diagnose --dataset alpaca --models smollm2 --format json
    """
    import dataclasses
    import json

    from selectit.fusion import health

    table = store(ctx).diagnose(dataset, models=_parse_models(models), prompt_set=prompt_set)
    rows = table.to_pylist()
    warnings = [line for r in rows for line in r["warning"].splitlines()]
    if fmt == "json":
        echo(json.dumps({"dataset": dataset, "rows": rows, "warnings": warnings,
                               "thresholds": dataclasses.asdict(health.THRESHOLDS)}, ensure_ascii=False, indent=2))
        return
    print_table(f"rater health of {dataset}",
                ["model", "prompt", "cells", "label mass (median)", "p10", "mean max P'", "collapse",
                 "truncated", "ρ prompts", "ρ models", "ρ length"],
                [(r["model"] or "(all models)", "all" if r["level"] != "prompt" else str(r["position"]), r["cells"],
                  _fmt(r["mass_median"]), _fmt(r["mass_p10"]), _fmt(r["mean_max_p"]),
                  "–" if r["collapse_share"] is None else f"{100 * r['collapse_share']:.0f}% → {r['collapse_base']}",
                  "–" if r["truncated_share"] is None else f"{100 * r['truncated_share']:.0f}%",
                  _fmt(r["rho_prompts"], 2), _fmt(r["rho_models"], 2), _fmt(r["rho_length"], 2)) for r in rows])
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
def sql(ctx: click.Context, query: str, models: str | None, prompt_set: str | None, alpha: float, formula: str,
        weights: str | None, top: float, fmt: str) -> None:
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

    columns, rows = store(ctx).query(query, top=top, **_fusion_args(models, prompt_set, alpha, formula, weights))
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
        from selectit.fusion import views as fusion  # its JSON helpers: the rows are DuckDB's values

        keys = fusion.unique_names(columns)
        echo(json.dumps([dict(zip(keys, map(fusion.json_value, r))) for r in rows], ensure_ascii=False, indent=2,
                        default=str, allow_nan=False))
    else:
        print_table(None, columns, rows)


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
    SmolLM2-135M-Instruct, score, add Gemma-3-270M and score only its cells, rank with the
    model-level fusion, export the top 20% (Selective Alpaca) and write the HTML report. A second
    run reuses every stored score.

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
