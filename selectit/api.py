"""The Python API: the one door to selectit, for the CLI, notebooks and scripts.

    >>> import selectit
    >>> store = selectit.open("sqlite:///selectit.db")          # doctest: +SKIP
    >>> store.ingest("alpaca.json", dataset="alpaca")            # doctest: +SKIP
    >>> store.rank("alpaca", ranking=selectit.Ranking(alpha=0.5)).to_pandas().head()  # doctest: +SKIP

`open(url)` gives a `Store` on a curation database (created on first use; an older schema is
refused with the command that upgrades it). Tables come back as `pyarrow.Table`
(``.to_pandas()`` where pandas is installed). Nothing here imports torch until `score()` runs.
How to rank is one value, `selectit.Ranking`, which every ranked method takes as `ranking=`.

Every `selectit` command is one `Store` method: the CLI parses options, calls it and prints what
it returns, so both raise the same `selectit.errors.SelectitError` messages.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selectit.contract import DEFAULT_PROMPT_SET, DEFAULT_TOP
from selectit.errors import SelectitError
from selectit.ranking import DEFAULT_RANKING, Ranking
from selectit.results import (  # noqa: F401 - what the methods return, importable from here too
    InitResult,
    ModelVersion,
    PlanResult,
    RankSummary,
    SelectionInfo,
    StoreStatus,
)
from selectit.settings import Settings
from selectit.store import db

if TYPE_CHECKING:
    import datasets
    import duckdb
    import pyarrow as pa
    from sqlalchemy.engine import Engine

    from selectit.fusion.audit import AuditFigures
    from selectit.fusion.session import Fusion
    from selectit.io.export import ExportResult
    from selectit.io.ingest import IngestResult
    from selectit.report.build import ReportResult
    from selectit.scoring.engines import EngineOptions


#: More rows than any dataset holds (a `--limit` above it is capped, not an overflow).
MAX_ROWS = 2**62


def init(url: str | None = None) -> InitResult:
    """Create the store in an empty (or new) database at `url`, or upgrade a selectit one (`selectit init`)."""
    from selectit.scoring.registry import ensure_default_prompts

    before, after = db.init_store(url)  # refuses another application's database
    engine = db.make_engine(url)
    try:
        with db.session_scope(engine) as session:  # the built-in prompt set (reads never create it)
            ensure_default_prompts(session)
        return InitResult(db.shown_url(url), before, after or "")
    finally:
        engine.dispose()


class Store:
    """A curation database: ingest, score, rank, select, export and query it.

    Modelled on sqlite-utils' `Database`: one object per database, methods named after the CLI
    commands, plain values in and tables out.
    """

    def __init__(self, url: str | None = None, *, settings: Settings | None = None,
                 engine_options: EngineOptions | None = None) -> None:
        from selectit.scoring.engines import EngineOptions

        # The configuration, resolved once here (what is not given comes from the environment)
        # and passed down as values: the database URL, the runner's knobs, the engine options.
        db.check_url(url)
        self.url: str = db.resolve_url(url)
        self.settings = settings or Settings.from_env()
        self.engine_options = engine_options or EngineOptions.from_env()
        self.engine: Engine = db.open_store(self.url)

    # -- context manager --------------------------------------------------------------------
    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<selectit.Store {self.engine.url.render_as_string(hide_password=True)}>"

    # -- data in ----------------------------------------------------------------------------
    def ingest(self, data: str | os.PathLike[str] | Any, dataset: str, *, format: str | None = None,
               map: dict[str, str] | str | None = None, split: str | None = None,
               skip_invalid: bool = False, limit: int | None = None, progress: Any = None) -> IngestResult:
        """Add the records of `data` to `dataset`: a file, a ``save_to_disk`` directory, an
        ``owner/name`` Hugging Face Hub dataset read offline from the local cache, or a table in
        memory (a ``pyarrow.Table``, a pandas ``DataFrame`` or a ``datasets.Dataset``).

        `map` names the file's columns for selectit's fields, e.g.
        ``{"instruction": "question", "output": "response"}`` or the CLI's
        ``"instruction=question,output=response"``.

            >>> store.ingest(pd.DataFrame({"instruction": ["Hi"], "output": ["Hello"]}), "greetings")  # doctest: +SKIP
        """
        from selectit.io.ingest import ingest

        return ingest(self.engine, data, dataset, fmt=format, skip_invalid=skip_invalid, limit=limit,
                      column_map=map, split=split, progress=progress)

    def datasets(self) -> pa.Table:
        """name, samples, created, source of every dataset."""
        import pyarrow as pa

        from selectit.io.ingest import dataset_rows

        rows = dataset_rows(self.engine)
        return pa.table({"name": [r[0] for r in rows], "samples": [r[1] for r in rows],
                         "created": [r[2] for r in rows], "source": [r[3] for r in rows]})

    def status(self, dataset: str | None = None) -> StoreStatus:
        """Samples per dataset, distinct samples stored, cells and jobs per model × prompt set, and
        per model version its rates over the last minute and ten minutes and its ETA — of every
        dataset, or of `dataset`'s samples only (`NoSuchDataset` if there is none by that name).

            >>> for m in selectit.open("selectit.db").status("alpaca").models:  # doctest: +SKIP
            ...     print(m.model, m.missing, m.eta)
        """
        import dataclasses

        from selectit.jobs.ticks import tick_rows
        from selectit.status import model_progress, status_rows
        from selectit.io.ingest import sample_counts
        from selectit.jobs.estimate import duration

        rows = status_rows(self.engine, dataset=dataset)  # first: an unknown dataset fails here
        per_dataset, total = sample_counts(self.engine)
        if dataset is not None:
            per_dataset = [(name, n) for name, n in per_dataset if name == dataset]
        models = model_progress(rows)
        left = self.time_left({m.model_id: m.missing for m in models}, dataset, {m.model_id: m.missing_tokens for m in models})
        models = [dataclasses.replace(m, eta=duration(m.eta_seconds) if m.eta_seconds is not None else "–",
                                      time_left=left[m.model_id]) for m in models]
        from selectit.store import signatures

        return StoreStatus(per_dataset, total, rows, tick_rows(self.engine), models, dataset,
                           signatures.count(self.engine, dataset))

    # -- models and prompts -----------------------------------------------------------------
    def add_model(self, name: str, source: str, *, dtype: str | None = None, weight: float | None = None,
                  max_tokens: int | None = None) -> ModelVersion:
        """Register model `name` from `source` (hub id, directory, .gguf or an alias); its version."""
        from selectit.scoring import registry

        with db.session_scope(self.engine) as session:
            before = {m.id for m in registry.list_models(session)}
            row = registry.add_model(session, name, source, dtype=dtype, weight=weight, max_tokens=max_tokens)
            return ModelVersion.of(row, added=row.id not in before)

    def add_served_model(self, name: str, endpoint: str, served_model: str, *, tokenizer: str | None = None,
                         api_key_env: str | None = None, weight: float | None = None, n_params: int | None = None,
                         max_tokens: int | None = None, chat: bool = False) -> ModelVersion:
        """Register model `name` served by an OpenAI-compatible server (scored by the `openai`
        engine); its version. The API key stays in the environment variable `api_key_env`;
        `chat=True` asks /chat/completions (top-k only, a version of its own).

            >>> store.add_served_model("llama", "http://10.0.0.5:8000/v1", "llama2-7b",
            ...                        tokenizer="/models/Llama-2-7b-hf", n_params=6738415616)  # doctest: +SKIP
        """
        from selectit.scoring import registry

        with db.session_scope(self.engine) as session:
            before = {m.id for m in registry.list_models(session)}
            row = registry.add_served_model(session, name, endpoint, served_model, tokenizer=tokenizer,
                                            api_key_env=api_key_env, weight=weight, n_params=n_params,
                                            max_tokens=max_tokens, chat=chat)
            return ModelVersion.of(row, added=row.id not in before)

    def models(self) -> list[ModelVersion]:
        """Every model version, by name then id."""
        from selectit.scoring import registry

        with db.read_scope(self.engine) as session:
            return [ModelVersion.of(m) for m in registry.list_models(session)]

    def prompt_sets(self) -> list[tuple[str, str, int, int, int]]:
        """(set, layout, scale, active prompts, versions) of every prompt set."""
        from selectit.scoring import registry

        with db.read_scope(self.engine) as session:
            return registry.prompt_sets(session)

    def import_prompts(self, path: str | os.PathLike[str], set_name: str, layout: str, *,
                       first: int | None = None, scale: int = 5) -> list[int]:
        """Make the lines of `path` the prompts of `set_name`; the ids of its active prompt versions."""
        from selectit.scoring import registry

        with db.session_scope(self.engine) as session:
            return [p.id for p in registry.import_prompts(session, path, set_name, layout, first=first, scale=scale)]

    # -- scoring ----------------------------------------------------------------------------
    def score(self, *, dataset: str | None = None, model: str | None = None, prompt_set: str | None = None,
              progress: Any = None, batch_size: int | None = None, engine: EngineOptions | None = None,
              retry_failed: bool = False, turns: str = "all") -> Any:
        """Score the missing cells in this process (loads torch); a `ScoreSummary` of what was done.

        `turns`: ``"all"`` rates every assistant turn of a conversation, ``"last"`` its last only.
        Every model needed is loaded before any job is claimed: one that cannot be (a missing API
        key, an unreachable server) raises `selectit.errors.ModelLoadError` and charges no cell.
        A failed cell is retried by later runs up to `Settings.max_cell_attempts` times; then it
        stays failed (the summary's `exhausted`) until `retry_failed=True` gives the scope's failed
        cells their attempts back. The summary's `failed` counts the cells this run left failed,
        `left_failed` those of the scope still failed as it ends.

        `progress`: ``True`` for a progress bar that suits notebooks and terminals (tqdm.auto), or
        a `selectit.jobs.runner.ScoreProgress` (``start``, ``computed``, ``advance``, ``note``, ``loading``; the
        CLI passes its own bar).
        `engine`: the scoring engine and its options (default: the store's, ``$SELECTIT_ENGINE`` and friends).

            >>> store.score(dataset="demo", progress=True)  # doctest: +SKIP
        """
        from selectit.jobs.runner import TqdmProgress, score_in_process
        from selectit.store import signatures

        signatures.fill(self.engine, dataset=dataset)  # cheap cells first: samples ingested before they existed
        bar = TqdmProgress() if progress is True else None
        try:
            return score_in_process(self.engine, dataset=dataset, model=model, prompt_set=prompt_set,
                                    progress=bar or progress, batch_size=batch_size,
                                    engine_options=engine or self.engine_options,
                                    retry_failed=retry_failed, settings=self.settings, turns=turns)
        finally:
            if bar is not None:
                bar.close()

    def embed(self, *, dataset: str | None = None, model: str | None = None) -> Any:
        """Compute the missing embedding cells of `dataset` (the active `model`'s mean-pooled hidden
        states; default the first active model) and grow `similar_pairs` new × all, for `--diverse`
        (loads torch); a `selectit.scoring.embeddings.EmbedResult`."""
        from selectit.scoring.embeddings import fill

        return fill(self.engine, model=model, dataset=dataset)

    def plan(self, *, dataset: str | None = None, model: str | None = None, prompt_set: str | None = None,
             enqueue: bool = True, turns: str = "all") -> PlanResult:
        """Turn the missing cells (of every turn, or with ``turns="last"`` of the last turns) into
        jobs and (with `enqueue`) send them to the workers' queues."""
        from selectit.jobs.planner import plan as plan_jobs

        ids = plan_jobs(self.engine, dataset=dataset, model=model, prompt_set=prompt_set, settings=self.settings,
                        turns=turns)
        sent = resent = 0
        if enqueue:
            from selectit.workers.app import enqueue as send

            sent, resent = send(self.engine, ids, self.settings)  # and those queued earlier but never sent
        return PlanResult(len(ids), sent, resent)

    def run_worker(self, models: Sequence[str], *, control_queue: bool, pool: str, concurrency: int,
                   engine_options: EngineOptions | None = None) -> None:
        """Run a Celery worker of the fleet on `models`' queues (and the control queue), with this
        store's settings and database, until it is stopped (`selectit worker`)."""
        from selectit.workers.app import run_worker

        self.require_models(models)
        run_worker(self.settings, models=models, control_queue=control_queue, pool=pool, concurrency=concurrency,
                   db_url=self.url, engine_options=engine_options or self.engine_options)

    def require_models(self, names: Sequence[str]) -> None:
        """Fail with `NoSuchModel` unless every name is an active model (a worker's queues)."""
        from selectit.store import lookups

        if names:
            with db.read_scope(self.engine) as session:
                lookups.active_models(session, names)

    def estimate(self, *, dataset: str | None = None, model: str | None = None, prompt_set: str | None = None,
                 engine: str | None = None, tokenizer: bool = True, turns: str = "all") -> list[Any]:
        """What scoring the missing cells would cost, per model version (`selectit.jobs.estimate.Estimate`):
        cells, prompt tokens (tokenizer, or estimated from characters; at most the model's context
        per cell), forwards, and a time from the rate recorded for `engine` (default the store's,
        $SELECTIT_ENGINE, else torch; a model served by an endpoint: the openai engine's), for
        `turns` and for the last turns alone. Writes nothing."""
        from selectit.jobs.estimate import estimate

        return estimate(self.engine, dataset=dataset, model=model, prompt_set=prompt_set,
                        scoring_engine=engine or self.engine_options.engine, tokenizer=tokenizer,
                        settings=self.settings, turns=turns)

    def time_left(self, missing: dict[int, int], dataset: str | None = None, tokens: dict[int, int] | None = None) -> dict[int, str]:
        """model version id → how long its `missing` cells (of `dataset`, else of every one; `tokens`: theirs, if
        known) take at the per-token rate recorded for the store's engine (`selectit.jobs.estimate.time_left`)."""
        from selectit.jobs.estimate import time_left

        return time_left(self.engine, missing, self.engine_options.engine, dataset, tokens)

    # -- fusion -----------------------------------------------------------------------------
    # Every ranked method takes one `Ranking` (models, θ, prompt set, α, formula; default
    # SelectIT's) and runs the recipe of `selectit.fusion.session.Fusion`.
    def _fusion(self, ranking: Ranking, top: float | None = None) -> Fusion:
        from selectit.fusion.session import Fusion

        return Fusion(self.url, _ranking(ranking), top=DEFAULT_TOP if top is None else top)

    def rank_summary(self, dataset: str, *, ranking: Ranking = DEFAULT_RANKING, top: float | None = None,
                     top_n: int | None = None, min_score: float | None = None, limit: int | None = None,
                     require_complete: bool = False) -> RankSummary:
        """The head of `dataset`'s ranking (`limit` rows of those kept), its size and its coverage.

        A partly scored dataset gives a `warning`, or with `require_complete` an `IncompleteScoring` error.
        """
        from selectit.fusion import selection

        criterion = selection.Criterion(top=top, top_n=top_n, min_score=min_score)
        if limit is not None:
            limit = min(limit, MAX_ROWS)  # more rows than any dataset holds: DuckDB's LIMIT is 64-bit
        with self._fusion(ranking) as f:
            ranked = f.rank(dataset, require_complete=require_complete)
            head = selection.chosen_with_texts(f.con, criterion, limit=limit, columns=("instruction",))
            n_chosen = selection.count_chosen(f.con, criterion)
            n_kept = selection.count_chosen(f.con)
        return RankSummary(dataset, ranked.params, criterion, head, ranked.n_rankable, n_chosen, ranked.coverage,
                           ranked.warning, n_kept)

    def rank(self, dataset: str, *, ranking: Ranking = DEFAULT_RANKING, top: float | None = None,
             top_n: int | None = None, min_score: float | None = None) -> pa.Table:
        """The dataset's ranking, best first: rank, sample_id, position, s_model, instruction, input, output.

        Recomputed from the stored ratings for any `Ranking` (models, θ, prompt set, α, formula).
        `top`/`top_n`/`min_score` keep only part of it (default: every rankable sample).

            >>> store.rank("alpaca", ranking=selectit.Ranking(alpha=0.5), top=0.2)  # doctest: +SKIP
        """
        from selectit.fusion import selection

        criterion = selection.Criterion(top=top, top_n=top_n, min_score=min_score)
        with self._fusion(ranking) as f:
            f.rank(dataset)
            return selection.chosen_with_texts(f.con, criterion)

    def select(self, name: str, dataset: str, *, ranking: Ranking = DEFAULT_RANKING, top: float | None = None,
               top_n: int | None = None, min_score: float | None = None, random: float | None = None,
               seed: int = 0, by: str = "score", require_complete: bool = False, sql: str | None = None,
               ids: Sequence[int] | str | os.PathLike[str] | None = None) -> SelectionInfo:
        """Freeze the current top of `dataset`'s ranking as the selection `name` (default: top 20%).

        Controls for ablations, from the same rankable samples and with the same size rules:
        ``random=0.2, seed=1`` draws 20% at random (the same ids on every store), and
        ``by="length", top=0.2`` keeps the 20% with the longest responses. A partly scored dataset
        gives a `warning`, or with `require_complete` an `IncompleteScoring` error (nothing frozen).
        `sql` (a read-only query with a ``sample_id`` column) or `ids` (sample ids, or a file of
        them, one a line) freeze exactly those samples, in that order; the params record the query.
        """
        from selectit.fusion.selection import criterion_for, freeze_selection

        criterion = criterion_for(top=top, top_n=top_n, min_score=min_score, random=random, seed=seed, by=by,
                                  sql=sql, ids=ids)
        with self._fusion(ranking) as f:
            ranked = f.rank(dataset, require_complete=require_complete)
            selection_id, n, n_rankable = freeze_selection(self.engine, f.con, name, dataset, criterion,
                                                           ranked.n_rankable)
        return SelectionInfo(name, selection_id, dataset, n, n_rankable, ranked.coverage, criterion.describe(),
                             ranked.warning)

    def selection(self, name: str) -> pa.Table:
        """The frozen selection `name`, best first: rank, sample_id, score (its S_model when frozen),
        instruction, input, output, position and original_id in its dataset, and ``original`` (the
        record as ingested, JSON text; null where it was not kept).

            >>> store.selection("demo-top").to_pandas().head()  # doctest: +SKIP
        """
        from selectit.store import lookups

        with db.read_scope(self.engine) as session:
            found = lookups.selection(session, name)
            selection_id, dataset_id = found.id, found.dataset_id
        with self._duckdb() as con:
            return con.execute(
                "SELECT ss.rank, ss.sample_id, ss.score, s.instruction, s.input, s.output, "
                "m.position, m.original_id, m.original "
                "FROM store.selection_samples ss JOIN store.samples s ON s.id = ss.sample_id "
                "LEFT JOIN store.dataset_samples m ON m.sample_id = ss.sample_id AND m.dataset_id = ? "
                "WHERE ss.selection_id = ? ORDER BY ss.rank", [dataset_id, selection_id]).to_arrow_table()

    @contextmanager
    def _duckdb(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """DuckDB with the curation database attached read-only as `store` (no fusion views)."""
        from selectit.fusion import views as fusion

        con = fusion.attach(self.url)
        try:
            yield con
        finally:
            con.close()

    def export(self, out: str | os.PathLike[str] | None = None, *, selection: str | None = None, dataset: str | None = None,
               format: str | None = None, order: str = "rank", with_scores: bool = False,
               llamafactory: bool | str | None = False,
               card: bool = True, ranking: Ranking = DEFAULT_RANKING, top: float | None = None,
               top_n: int | None = None, min_score: float | None = None, overwrite: bool = False,
               card_paths: bool = False, require_complete: bool = False) -> ExportResult | datasets.Dataset:
        """Write a frozen `selection` (or the current top of `dataset`) to `out`.

        `ranking` and `top`/`top_n`/`min_score` choose the current top of `dataset` (a frozen
        selection keeps its own). `format` defaults to ``original`` (the records as ingested, in the input's format) when
        every selected record kept its original, else ``alpaca-json``. `out` a directory (existing,
        or ending with ``/``): the files are named after the entry. Existing files are replaced only
        when `out` names them or this export wrote them for the same entry, unless `overwrite`.

        Without `out`, ``format="hf-dataset"`` returns the export as a `datasets.Dataset` in
        memory (the columns of an hf-dataset export; the dataset card in ``ds.info.description``),
        nothing written:

            >>> ds = store.export(selection="demo-top", format="hf-dataset", with_scores=True)  # doctest: +SKIP
            >>> ds.column_names[:5]  # doctest: +SKIP
            ['instruction', 'input', 'output', 'system', 'messages']
        """
        from selectit.io.export import export_selection

        if (selection is None) == (dataset is None):
            raise SelectitError("give either --selection NAME (a frozen selection) or --dataset D (the current ranking)")
        if selection is not None and (top, top_n, min_score) != (None, None, None):
            raise SelectitError(f"--selection {selection} is frozen with its own criterion; --top, --top-n and "
                                f"--min-score choose from the current ranking and go with --dataset")
        if isinstance(llamafactory, str) and llamafactory:  # the entry's name in dataset_info.json: one line
            from selectit.contract import valid_name

            llamafactory = valid_name(llamafactory, "LLaMA-Factory dataset")
        if selection is not None and ranking != DEFAULT_RANKING:
            raise SelectitError(f"--selection {selection} is frozen with its own models, prompts, α and formula; "
                                f"--models, --prompt-set, --alpha, --formula and --weights rank the current "
                                f"dataset and go with --dataset")
        return export_selection(self.engine, self.url, out, selection=selection, dataset=dataset, fmt=format,
                                order=order, with_scores=with_scores, llamafactory=llamafactory, card=card,
                                ranking=_ranking(ranking), top=top, top_n=top_n, min_score=min_score,
                                overwrite=overwrite, card_paths=card_paths, require_complete=require_complete)

    def diagnose(self, dataset: str, *, ranking: Ranking = DEFAULT_RANKING) -> pa.Table:
        """Rater health of `dataset`: the `rater_health` rows (per model, then per prompt; the
        fusion row; then, for conversations, the `health.turn_positions` rows of level ``turn``
        with their ``mean_s_sent`` and ``truncated`` columns) with label mass, decisiveness,
        collapse, agreement and truncation, and a `warning` column (the lines of
        `health_warnings`, joined by newlines; "" when none).

        >>> selectit.open("selectit.db").diagnose("alpaca").to_pandas()   # doctest: +SKIP
        """
        import pyarrow as pa

        from selectit.fusion import health

        with self._fusion(ranking) as f:
            rows = health.diagnose(f.con, dataset)
            found = health.judge(rows) + health.audit_warnings(f.con, dataset)  # a failed audit: the fusion's
            near = health.near_duplicate_warning(f.con, dataset)  # on the fusion row
            turns = health.turn_positions(f.con, dataset)  # level 'turn' rows, after the fusion row
        for r in rows:
            r["warning"] = "\n".join([w.text for w in found if r["level"] != "prompt" and w.model == r["model"]]
                                     + ([near] if near and r["level"] == "fusion" else []))
        columns = [*health.COLUMNS, *(("mean_s_sent", "truncated") if turns else ()), "warning"]
        return pa.table({c: pa.array([r.get(c, "" if c == "warning" else None) for r in rows + turns]) for c in columns})

    def audit(self, dataset: str, *, ranking: Ranking = DEFAULT_RANKING, size: int | None = None, seed: int = 0,
              top: float = DEFAULT_TOP, labels: str | os.PathLike[str] | None = None, score: bool = True,
              progress: Any = None, engine: EngineOptions | None = None) -> Any:
        """Draw `size` records of `dataset` (default a few percent, at least 20) with `seed`, store
        known-bad twins in ``<dataset>.audit`` (`selectit.io.audit`), score its missing cells (unless
        not `score`; `progress`, `engine` as in `score`) and return `selectit.fusion.audit.AuditFigures`
        (figures, verdict, `made`, `scored`). With `labels` (a file of human preferences or graded
        records, `selectit.io.labels`) score those instead: `selectit.fusion.labels.LabelFigures`.

            >>> print(store.audit("alpaca", size=40, progress=True).verdict)  # doctest: +SKIP
            raters separate broken responses from good ones (AUROC 0.91)
        """
        import dataclasses

        from selectit.fusion import audit
        from selectit.fusion import labels as labelled
        from selectit.io.audit import make_audit
        from selectit.io.labels import make_labels

        made = make_audit(self.engine, dataset, size=size, seed=seed) if labels is None else (
            make_labels(self.engine, dataset, labels))
        scored = [self.score(dataset=made.name, model=model, prompt_set=ranking.prompt_set or DEFAULT_PROMPT_SET,
                             progress=progress, engine=engine) for model in (ranking.models or (None,)) if score]
        with self._fusion(ranking, top) as f:
            found = audit.figures(f.con, dataset) if labels is None else labelled.figures(f.con, made)
        return dataclasses.replace(found, made=made, scored=scored)

    def delete_audit(self, dataset: str) -> int:
        """Remove `dataset`'s audit and the twins only it held, with their scores (not `dataset`'s); samples deleted."""
        from selectit.io.audit import delete_audit

        return delete_audit(self.engine, dataset)

    def health_words(self, prompt_sets: Sequence[str], dataset: str | None = None) -> dict[tuple[str, str], str]:
        """(model, prompt set) → `diagnose`'s judgement of `dataset` (None: every stored sample) in one word (`status`)."""
        from selectit.fusion import health

        return health.store_words(self.url, prompt_sets, dataset)

    def health_warnings(self, dataset: str, *, ranking: Ranking = DEFAULT_RANKING,
                        selection: str | None = None) -> list[str]:
        """The rater health warnings of `dataset` (or of the frozen `selection`'s dataset and
        models), one line each; [] when every figure is within its threshold (`selectit.fusion.health`)."""
        from selectit.fusion import health

        if selection is not None:
            return health.selection_warnings(self.engine, self.url, selection)
        return health.warnings_for(self.url, dataset, _ranking(ranking))

    def report(self, dataset: str, out: str | os.PathLike[str], *, ranking: Ranking = DEFAULT_RANKING,
               top: float = DEFAULT_TOP) -> ReportResult:
        """Write an HTML report of `dataset`'s ratings and its top share to the directory `out`.

        A rerun replaces only the files the previous report wrote there (its manifest lists them).
        """
        from selectit.report.build import build_report

        return build_report(self.url, dataset, out, _ranking(ranking), top=top)

    def query(self, query: str, *, ranking: Ranking = DEFAULT_RANKING,
              top: float | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Read-only SQL (DuckDB) over the fusion views and the curation tables: (columns, rows)."""
        from selectit.fusion import views as fusion

        with self._fusion(ranking, top) as f:
            if isinstance(query, str) and "near_duplicates" in query.lower():  # its groups are computed when asked for
                f.near_duplicates()
            return fusion.run_sql(f.con, query)

    def sql(self, query: str, *, ranking: Ranking = DEFAULT_RANKING, top: float | None = None) -> pa.Table:
        """Read-only SQL (DuckDB) over the fusion views and the curation tables (``store.<table>``)."""
        from selectit.fusion.console import as_arrow

        return as_arrow(*self.query(query, ranking=ranking, top=top))


# -- the rest of the front door: what the CLI needs besides a Store ---------------------------
#: The environment variable of the database URL, and the errors a database URL or a driver raises.
URL_ENV, DriverError, StoreError = db.URL_ENV, db.DriverError, db.StoreError
check_url, explain_error, default_store_file = db.check_url, db.explain_error, db.default_store_file


def engine_names() -> list[str]:
    """The scoring engines `--engine` accepts: the built-in ones, then those of installed packages."""
    from selectit.scoring.engines import engine_names as names

    return names()


def require_vllm() -> None:
    """Fail early, with the install command, where vLLM is missing."""
    from selectit.scoring.engines import require_vllm as require

    require()


def health_thresholds() -> dict[str, float]:
    """The documented rater-health thresholds (`diagnose --format json`)."""
    import dataclasses

    from selectit.fusion.health import THRESHOLDS

    return dataclasses.asdict(THRESHOLDS)


def dtype_warning(dtype: str | None) -> str | None:
    """One line when a dtype rates only approximately (half precision without hardware, int8)."""
    from selectit.scoring import loading

    return (loading.half_precision_warning(dtype) or loading.approximation_warning(dtype)) if dtype else None


def _ranking(value: Any) -> Ranking:
    """`value` if it is a `Ranking`, else the one-line error a script needs (not an AttributeError later)."""
    if not isinstance(value, Ranking):
        raise SelectitError(f"ranking must be a selectit.Ranking, e.g. Ranking(alpha=0.5), not {type(value).__name__}")
    return value


def open(url: str | Path | None = None) -> Store:  # noqa: A001 - selectit.open mirrors sqlite_utils.Database
    """A `Store` on the database at `url`: a SQLAlchemy URL or a path to a SQLite file
    (default $SELECTIT_DATABASE_URL, else ./selectit.db)."""
    if url is not None and "://" not in str(url):
        url = f"sqlite:///{Path(url)}"
    return Store(None if url is None else str(url))
