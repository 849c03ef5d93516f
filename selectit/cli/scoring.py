"""Commands that register raters and score: model add, models, prompts, score, plan, worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from selectit.cli.base import (
    UserError,
    console,
    echo,
    err_console,
    for_terminal,
    handles_errors,
    main,
    print_table,
    store,
)
from selectit.cli.options import _engine_choice, _engine_options, _scope_options
from selectit.timing import TimeLeft


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
@click.option("--retry-failed", is_flag=True,
              help="First give the failed cells of the scope their attempts back, so cells that failed "
                   "$SELECTIT_MAX_ATTEMPTS times are tried again.")
@click.pass_context
@handles_errors
def score(ctx: click.Context, dataset: str | None, model: str | None, prompt_set: str | None, turns: str,
          batch_size: int, quiet: bool, estimate: bool, verbose: bool, retry_failed: bool,
          **engine_options: Any) -> None:
    """Score the missing (sample, model, prompt, turn) cells here, in this process.

    Only cells never scored (or failed, below the attempt limit) are computed, through the same
    job code the Celery workers run. Ctrl-C is safe: what was written stays written and a rerun
    continues; a run killed outright is taken over by the next one.

    Every model needed is loaded before any job is claimed: a model that cannot be loaded (a
    missing API key, a server that refuses or does not answer, a tokenizer) is an error that
    charges no cell an attempt. A failed cell is retried by the next runs, up to
    $SELECTIT_MAX_ATTEMPTS attempts [3]; after that only --retry-failed tries it again.

    Exit status: 0 when every cell of the scope is scored; 1 on an error, or when cells of the
    scope are left failed (the summary counts them, and so does `selectit status`); 130 on Ctrl-C.

    \b
    Example:
      selectit score --dataset alpaca --model smollm2
      selectit score              # every dataset × active model × active prompt set
      selectit score --model llama2-70b --engine vllm --tensor-parallel-size 4
      selectit score --dataset alpaca --estimate   # the cost first: tokens, forwards, time
      selectit score --dataset chats --turns last  # conversations: their last turns only
      selectit score -v           # and where the time went
      selectit score --model served-llama --concurrency 64 --batch-size 64
      selectit score --dataset alpaca --retry-failed   # cells at the attempt limit, once more
    """
    from selectit import timing

    if estimate:
        _print_estimates(ctx, dataset, model, prompt_set, engine_options.get("engine"), turns)
        return
    t0, started = time.perf_counter(), timing.process_age()
    if started is not None:
        timing.PHASES["start-up and imports"] = started
    with timing.phase("store"):
        opened = store(ctx)
    options = _engine_choice(opened.engine_options, engine_options)
    with _ScoringBar(enabled=not quiet) as bar:
        summary = opened.score(dataset=dataset, model=model, prompt_set=prompt_set, progress=bar,
                               batch_size=batch_size, engine=options, retry_failed=retry_failed, turns=turns)
    line = (f"scored {summary.scored} cells, failed {summary.failed}, "
            f"skipped {summary.skipped} already scored")
    if summary.interrupted:
        err_console.print(f"interrupted: {line}. Run the same command again to continue.", soft_wrap=True)
        ctx.exit(130)
    console.print(line + (f" ({summary.reset} failed cells given their attempts back)." if summary.reset else "."))
    if verbose:
        total = time.perf_counter() - t0 + (started or 0.0)
        console.print(f"time: {total:.2f} s in all" + ("" if started is not None else " (start-up not known here)"),
                      highlight=False)
        for text in timing.breakdown(total):
            console.print(text, highlight=False, markup=False)
    if summary.left_failed:
        raise UserError(_left_failed(summary, opened.settings.max_cell_attempts))


def _left_failed(summary: Any, limit: int) -> str:
    """The one line of a run that left failed cells in its scope: how many, and what retries them."""
    parts = []
    if summary.retryable:
        parts.append(f"{summary.retryable} will be retried by the next `selectit score`")
    if summary.exhausted:
        parts.append(f"{summary.exhausted} failed {limit} times and are retried only by "
                     f"`selectit score --retry-failed`")
    return f"{summary.left_failed} cells are failed: {'; '.join(parts)}. `selectit status` counts them"


def _print_estimates(ctx: click.Context, dataset: str | None, model: str | None, prompt_set: str | None,
                     engine: str | None, turns: str) -> None:
    """`score --estimate` / `plan --dry-run`: the cost per model version, one line each (and one for
    the last turns alone where conversations have earlier turns missing)."""
    estimates = store(ctx).estimate(dataset=dataset, model=model, prompt_set=prompt_set, engine=engine, turns=turns)
    for e in estimates:
        echo(e.line())
    if estimates and estimates[0].signatures_missing:  # cheap cells of every sample, no model
        echo(f"near-duplicate signatures: {estimates[0].signatures_missing} samples without one "
             f"(`selectit score` computes them first, in seconds)")
    echo("Nothing was scored or written (estimate only).")


class _ScoringBar:
    """`selectit score`'s progress bar, drawn from the runner's reports: cells computed (it moves
    per request, not per committed batch), cells written, a smoothed rate and the time left.

    The time left is the tokens left at the smoothed tokens/s (`TimeLeft`), counted down between
    reports; cells at cells/s where the tokens are not known. While a model loads, a terminal
    sees "loading model NAME…" (a spinner before the bar is shown, the bar's label after), not a
    bar frozen at 0; a pipe sees nothing of either.
    """

    #: Seconds over which the rates are smoothed (an exponential moving average in time).
    RATE_TIME_CONSTANT = 20.0

    def __init__(self, *, enabled: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._shown = False
        self._status: Any = None
        self._clock = clock
        self._left: TimeLeft | None = None

    def __enter__(self) -> _ScoringBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._status is not None:
            self._status.stop()
        if self._bar is not None and self._shown:
            self._bar.stop()

    def _show(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._bar is not None and not self._shown:
            self._shown = True
            self._bar.start()

    def loading(self, text: str | None) -> None:
        if text is None and self._left is not None:
            self._left.restart()  # the load took no scoring time
        if not self.enabled:
            return
        if self._shown:  # one live display at a time: the bar's label says it
            self._bar.update(self._task, description=for_terminal(text) if text else "scoring")
        elif text is not None:
            from rich.text import Text  # plain text: a model name is no markup

            self._status = console.status(Text(for_terminal(text)))
            self._status.start()
        else:
            self._show()

    def start(self, total: int, tokens: int | None = None) -> None:
        if self._bar is not None and self._shown:  # a second run (`audit --models a,b`): one bar each
            self._bar.stop()
            self._shown = False
        if not self.enabled or total <= 0:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn

        self._bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                             TaskProgressColumn(),
                             TextColumn("{task.fields[rate]} cells/s, {task.fields[written]} written"),
                             _time_left_column(self._clock), console=console)
        # rate "–" until the first cells are computed (the models load first)
        self._task = self._bar.add_task("scoring", total=total, rate="–", written=0, left=None, at=0.0)
        self._written = 0
        self._left = TimeLeft(total, tokens, time_constant=self.RATE_TIME_CONSTANT, clock=self._clock)

    def computed(self, cells: int, tokens: int | None = None) -> None:
        if self._bar is None or self._left is None:
            return
        self._show()
        self._left.computed(cells, tokens)
        self._bar.update(self._task, completed=self._left.cells_done, rate=f"{self._left.cells_per_second:.1f}",
                         left=self._left.seconds(), at=self._clock())

    def seconds_left(self) -> float | None:
        """The time left as of the last report (the column counts it down from there)."""
        return self._left.seconds() if self._left is not None else None

    def advance(self, cells: int) -> None:
        if self._bar is not None:
            self._written += cells
            self._bar.update(self._task, written=self._written)

    def note(self, text: str) -> None:
        if self._bar is not None:
            self._show()
            self._bar.console.print(text)


def _time_left_column(clock: Callable[[], float]) -> Any:
    """A rich column of the task's `left` seconds (as of its `at` time), counted down by `clock`:
    rich's own TimeRemainingColumn divides the cells left by its cells/s."""
    import datetime

    from rich.progress import ProgressColumn
    from rich.text import Text

    class TimeLeftColumn(ProgressColumn):
        def render(self, task: Any) -> Text:
            left = task.fields.get("left")
            if left is None:
                return Text("-:--:--", style="progress.remaining")
            seconds = max(left - (clock() - task.fields["at"]), 0.0)
            return Text(str(datetime.timedelta(seconds=int(seconds))), style="progress.remaining")

    return TimeLeftColumn()


@main.command()
@click.option("--dataset", "-d", default=None, metavar="NAME",
              help="Only the samples of this dataset [default: every dataset].")
@click.option("--model", "-m", default=None, metavar="NAME",
              help="The rater model whose hidden states embed the samples [default: the first active model].")
@click.pass_context
@handles_errors
def embed(ctx: click.Context, dataset: str | None, model: str | None) -> None:
    """Compute the missing embeddings (for --diverse) and the similar pairs they give.

    Each sample's embedding is the mean of the model's last hidden states over its text (all
    turns, first 512 tokens), L2-normalised: a cell keyed by (sample, embedder version). New
    embeddings are compared with every stored one, and the pairs with cosine >= 0.8 are stored
    (`similar_pairs`), so `rank/select/export/report --diverse TAU` walks the ranking without a
    model. Only missing cells are computed: a rerun after new data embeds the new samples only.

    \b
    Example:
      selectit embed --dataset alpaca --model smollm2
      selectit select alpaca-diverse --dataset alpaca --top 0.2 --diverse 0.9
    """
    result = store(ctx).embed(dataset=dataset, model=model)
    echo(f"embeddings of {result.model}: {result.cells} computed, {result.pairs} similar pairs added "
         f"(cosine >= 0.8).")


@main.command()
@_scope_options
@click.option("--enqueue/--no-enqueue", default=True, show_default=True,
              help="Send the new jobs to the broker ($SELECTIT_BROKER_URL).")
@click.option("--dry-run", is_flag=True,
              help="Only print what scoring would cost (cells, prompt tokens, forwards, time); plan and write nothing.")
@click.pass_context
@handles_errors
def plan(ctx: click.Context, dataset: str | None, model: str | None, prompt_set: str | None, turns: str,
         enqueue: bool, dry_run: bool) -> None:
    """Turn the missing cells into jobs and send them to the workers' queues now.

    The workers' control loop does the same every $SELECTIT_PLAN_INTERVAL seconds; planning twice never
    puts a cell in two jobs.

    \b
    Example:
      export SELECTIT_DATABASE_URL=postgresql://selectit@db/selectit
      selectit plan --model smollm2
      selectit plan --dry-run      # the cost first: tokens, forwards, time per model
    """
    if dry_run:
        _print_estimates(ctx, dataset, model, prompt_set, None, turns)
        return
    result = store(ctx).plan(dataset=dataset, model=model, prompt_set=prompt_set, enqueue=enqueue, turns=turns)
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
    opened = store(ctx)
    options = _engine_choice(opened.engine_options, engine_options)
    if options.engine == "openai":  # the requests run concurrently inside one task
        if concurrency is not None:
            options = _engine_choice(opened.engine_options, {**engine_options, "concurrency": concurrency})
        concurrency = 1
    # The tasks run with these values (bound into the app), not with environment variables.
    opened.run_worker(models, control_queue=control, pool=pool, concurrency=concurrency or 1, engine_options=options)


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
@click.option("--chat", is_flag=True, default=False,
              help="With --endpoint: a chat-only server; each prompt goes as one user message to "
                   "/chat/completions, read in top-k mode (a version of its own, never mixed with completions "
                   "cells).")
@click.pass_context
@handles_errors
def model_add(ctx: click.Context, name: str, source: str | None, dtype: str | None, weight: float | None,
              max_tokens: int | None, endpoint: str | None, served_model: str | None, tokenizer: str | None,
              api_key_env: str | None, n_params: int | None, chat: bool) -> None:
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
      selectit model add gpt --endpoint https://api.openai.com/v1 --served-model gpt-4o-mini --chat \\
          --tokenizer ./o200k-tokenizer --api-key-env OPENAI_API_KEY --params 8000000000
    """
    from selectit.api import dtype_warning

    served = {"--served-model": served_model, "--tokenizer": tokenizer, "--api-key-env": api_key_env,
              "--params": n_params, "--chat": chat or None}
    if (source is None) == (endpoint is None):
        raise UserError("give either --source (a local model) or --endpoint with --served-model (a served model)")
    if endpoint is None and any(v is not None for v in served.values()):
        given = ", ".join(k for k, v in served.items() if v is not None)
        raise UserError(f"{given} go with --endpoint (a served model), not with --source")
    if endpoint is not None and (served_model is None or dtype is not None):
        raise UserError("--endpoint needs --served-model ID" if served_model is None else
                        "--dtype does not apply to a served model (the server chooses it)")
    warning = dtype_warning(dtype)
    if warning:
        err_console.print(warning, highlight=False, markup=False, soft_wrap=True)  # one line, never wrapped
    if endpoint is not None:
        m = store(ctx).add_served_model(name, endpoint, served_model, tokenizer=tokenizer, api_key_env=api_key_env,
                                        weight=weight, n_params=n_params, max_tokens=max_tokens, chat=chat)
    else:
        # Hashing and reading a GGUF of a few hundred MB takes a minute: say what is going on.
        from rich.text import Text  # plain text: a name like `x[/y]` is no markup

        # Shown on a terminal only: control characters escaped, as everywhere there.
        with err_console.status(Text(for_terminal(f"registering {name}: reading {source} (hashing the weights, "
                                                  f"the tokenizer's label ids, counting parameters)…"))):
            m = store(ctx).add_model(name, source, dtype=dtype, weight=weight, max_tokens=max_tokens)
    word = "added" if m.added else "unchanged"
    if m.endpoint:
        theta = (f"θ {m.weight:g}" if m.weight is not None else f"{m.n_params:,} parameters"
                 if m.n_params is not None else "no θ (give --weight or --params to fuse it with other models)")
        chat_note = " (chat layout)" if chat else ""
        console.print(f"model {m.name} {word}: version {m.id}, {m.served_model} served at {m.endpoint}{chat_note}, "
                      f"{theta}, "
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
