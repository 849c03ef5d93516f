"""The read model of SelectIT, as SQL: DuckDB views over the curation database.

`connect()` opens an in-memory DuckDB, ATTACHes the curation database READ-ONLY as `store`
(SQLite through DuckDB's `sqlite` extension, PostgreSQL through `postgres`; both loaded from the
binaries that the `duckdb-extension-*` PyPI packages carry, never downloaded), and defines:

- `token_scores(sample_id, model_id, model, prompt_id, set_name, position, scale, s_base,
  s_token_paper, s_token_reference, s_token)` — one row per usable cell;
- `sentence_scores(sample_id, model_id, model, n_prompts, s_sent)`;
- `model_scores(sample_id, n_models, s_model)`;
- `ranking(dataset, dataset_id, sample_id, position, s_model, rank, percentile)` (rank 1 = best);
- `selective_alpaca(dataset, rank, sample_id, instruction, input, output, s_model)` (top share);
- `rater_health(dataset, level, model_id, model, prompt_set, prompt_id, position, cells, …)`: how far
  the raters can be trusted (label mass, decisiveness, collapse, agreement; `health_sql`).

Only active model and prompt versions of the chosen models and prompt set enter the views (the
temporary tables `chosen_models` and `chosen_prompts` say which, with each model's θ); older
versions stay queryable by id through `store.scores`. The parameters (α, formula, θ) are fixed
when the connection is made: the views are cheap, so a new setting is a new connection.

**Tie rule.** Higher S_model first; equal S_model → the earlier position in the dataset (the
order of the ingested file). Positions are unique within a dataset, so the order is total.

**Rankable.** A sample is ranked only if every chosen (model, prompt) cell is stored with status
`ok`; otherwise it is counted as not yet rankable (missing or failed cells), never defaulted.

**Coverage** (`coverage`, `scoring_coverage`; used by `rank`, `select`, `report` and `status`):
a cell is *done* iff its stored status is `ok`, *failed* iff it is `failed`, and *missing*
otherwise (never scored). A sample is complete when all its cells are done, failed when at least
one cell failed, else missing.

**Top share.** `top_share_sql`: the first floor(share × rankable) samples, but at least one when
anything is rankable (share > 0 always).

The selection/export half (criteria, frozen selections, files) is `selectit.selection`.
"""

from __future__ import annotations

import atexit
import json
import math
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from selectit.contract import (  # noqa: F401 - the defaults are part of this module's interface
    DEFAULT_ALPHA,
    DEFAULT_FORMULA,
    DEFAULT_PROMPT_SET,
    DEFAULT_TOP,
    CellStatus,
    Formula,
    choices,
    valid_name,
)
from selectit.errors import NoSuchDataset, NoSuchModel, SelectitError
from selectit.store import db
from selectit.store.schema import MAX_SCALE

TIE_RULE = "higher s_model first, then the earlier dataset position"


class FusionError(SelectitError):
    """A ranking, selection or export request that cannot be served as asked."""


class ReadOnlyError(FusionError):
    """A statement tried to change the curation database through the SQL console."""


# --------------------------------------------------------------------------------------------
# One validator per knob
# --------------------------------------------------------------------------------------------
def validate_top(top: float) -> float:
    """The share kept by --top: a number in (0, 1]."""
    if not (isinstance(top, (int, float)) and math.isfinite(top) and 0 < top <= 1):
        raise FusionError(f"--top must be a share in (0, 1], e.g. 0.2 for the top 20%; got {top!r}")
    return float(top)


def validate_alpha(alpha: float) -> float:
    """α of the sentence level: a number >= 0."""
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise FusionError(f"--alpha must be a number >= 0, e.g. 0.2; got {alpha!r}")
    return float(alpha)


def validate_formula(formula: str) -> Formula:
    """The token-level formula, as a `Formula`."""
    try:
        return Formula(formula)
    except ValueError:
        raise FusionError(f"unknown formula {formula!r}; choose one of: {choices(Formula)}") from None


def top_share_sql(top: float, n_rankable: str = "n_rankable") -> str:
    """SQL bound on `rank` for the top share: floor(share × rankable), at least one.

    The 1e-9 absorbs binary rounding of the share (0.3 × 10 is 2.9999999999999996).
    """
    return f"greatest(1, floor({validate_top(top)!r} * {n_rankable} + 1e-9))"


# --------------------------------------------------------------------------------------------
# DuckDB with the curation database attached read-only
# --------------------------------------------------------------------------------------------
_EXTENSION_DIR: Path | None = None


def _extension_path(name: str) -> Path:
    """The extension binary shipped by the `duckdb-extension-<name>` package, as DuckDB wants it.

    DuckDB derives the entry point from the file name (`sqlite_scanner_duckdb_cpp_init`), but
    the package ships `sqlite.duckdb_extension`; a link named `sqlite_scanner.duckdb_extension`
    in a directory private to this user makes `LOAD` find it.
    """
    global _EXTENSION_DIR
    import importlib

    try:
        package = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError as exc:
        raise FusionError(
            f"the DuckDB {name} extension is not installed; run `pip install duckdb-extension-{name}=={duckdb.__version__}`"
        ) from exc
    found = sorted(Path(package.__file__).parent.glob(f"extensions/v{duckdb.__version__}/{name}.duckdb_extension"))
    if not found:
        raise FusionError(
            f"duckdb-extension-{name} carries no binary for DuckDB {duckdb.__version__}; "
            f"install the matching version: `pip install duckdb-extension-{name}=={duckdb.__version__}`"
        )
    if _EXTENSION_DIR is None:
        _EXTENSION_DIR = _private_dir()
    target = _EXTENSION_DIR / f"{name}_scanner.duckdb_extension"
    if not (target.is_symlink() and target.resolve() == found[0].resolve()):
        tmp = _EXTENSION_DIR / f".{name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(found[0])
        os.replace(tmp, target)  # atomic: concurrent processes never see a half-made link
    return target


def _private_dir() -> Path:
    """A directory only this user can write, reused across runs (nothing left behind per run).

    Falls back to a fresh temporary directory when the shared name is not ours and private.
    """
    base = Path(tempfile.gettempdir()) / f"selectit-duckdb-{os.getuid()}-{duckdb.__version__}"
    try:
        base.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = base.lstat()
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
        return base
    fresh = Path(tempfile.mkdtemp(prefix="selectit-duckdb-"))
    atexit.register(shutil.rmtree, fresh, ignore_errors=True)
    return fresh


#: libpq settings that go into a DuckDB secret, never into the visible path (with every
#: secret-bearing query parameter, `db.is_secret_key`).
_SECRET_KEYS = {"host": "HOST", "port": "PORT", "dbname": "DATABASE", "user": "USER", "password": "PASSWORD"}
#: The console's PostgreSQL session: every transaction read-only, even after a COMMIT.
_READ_ONLY_OPTIONS = "-c default_transaction_read_only=on"


def _libpq_parts(url: sa.URL) -> dict[str, str]:
    """libpq keywords for a SQLAlchemy PostgreSQL URL (empty values left out)."""
    parts: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "dbname": url.database,
        "user": url.username,
        "password": url.password,
    }
    parts.update({k: (v[-1] if isinstance(v, tuple) else v) for k, v in url.query.items()})
    return {k: str(v) for k, v in parts.items() if v not in (None, "")}


def _libpq(parts: dict[str, str] | sa.URL) -> str:
    """A libpq key=value connection string (of keywords, or of a whole URL)."""
    if isinstance(parts, sa.URL):
        parts = _libpq_parts(parts)

    def quote(value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    return " ".join(f"{k}={quote(v)}" for k, v in parts.items())


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _one_line(exc: BaseException) -> str:
    """DuckDB's message without its multi-line `LINE 1: …^` pointer, on one line."""
    text = str(exc).split("\n\nLINE ", 1)[0]
    return " ".join(text.split())


def attach(db_url: str | None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with the curation database attached read-only as `store`.

    Right after the ATTACH external access is turned off: nothing but the attached store can be
    read or written from here on (the views keep working; the extensions read the store through
    their own connections). The PostgreSQL password goes into a DuckDB secret, shown redacted.
    """
    url = make_url(db.resolve_url(db_url))
    con = duckdb.connect(
        config={
            "autoinstall_known_extensions": False,  # never download anything
            "autoload_known_extensions": False,
            "allow_unredacted_secrets": False,
        }
    )
    try:
        con.execute("SET enable_progress_bar = false")  # a session option: not allowed in config
        if url.get_backend_name() == "sqlite":
            path = db.sqlite_file(db_url)
            if path is None or not path.is_file():
                raise FusionError(f"no SQLite database at {str(path)!r}; create it with `selectit init`")
            con.execute(f"LOAD {_sql_str(str(_extension_path('sqlite')))}")
            try:
                con.execute(f"ATTACH {_sql_str(str(path.resolve()))} AS store (TYPE sqlite, READ_ONLY)")
            except duckdb.Error as exc:
                raise FusionError(f"cannot read the SQLite database {str(path)!r}: {_one_line(exc)}") from exc
        elif url.get_backend_name() == "postgresql":
            con.execute(f"LOAD {_sql_str(str(_extension_path('postgres')))}")
            parts = _libpq_parts(url)
            hidden = {k: v for k, v in parts.items() if k in _SECRET_KEYS or db.is_secret_key(k)}
            # DuckDB hands every key of the secret to libpq and shows them redacted.
            secret = ", ".join(f"{_SECRET_KEYS.get(k, k.upper())} {_sql_str(v)}" for k, v in hidden.items())
            # Not secret, so visible in duckdb_databases(): how long to wait, and a session whose
            # transactions are read-only even after a COMMIT (the role is the real guarantee).
            # The URL's own `options` come first: the last `-c` of a setting wins, so read-only does.
            visible = {"connect_timeout": str(db.connect_timeout()), "application_name": "selectit-fusion"}
            visible.update({k: v for k, v in parts.items() if k not in hidden})
            visible["options"] = " ".join(filter(None, [parts.get("options", ""), _READ_ONLY_OPTIONS]))
            con.execute(f"CREATE TEMPORARY SECRET selectit_store (TYPE postgres, {secret})")
            try:
                con.execute(f"ATTACH {_sql_str(_libpq(visible))} AS store "
                            f"(TYPE postgres, SECRET selectit_store, READ_ONLY)")
                read_only = con.execute(
                    "SELECT * FROM postgres_query('store', 'SELECT current_setting(''default_transaction_read_only'')')"
                ).fetchone()[0]
            except duckdb.Error as exc:
                raise FusionError(f"cannot attach {db.shown_url(url)}: {_one_line(exc)}") from exc
            if read_only != "on":
                raise FusionError(f"the session on {db.shown_url(url)} is not read-only "
                                  f"(default_transaction_read_only = {read_only}); check the URL's options=")
        else:
            raise FusionError(f"DuckDB cannot read a {url.get_backend_name()} database; use SQLite or PostgreSQL")
        con.execute("SET enable_external_access = false")
    except BaseException:
        con.close()
        raise
    return con


# --------------------------------------------------------------------------------------------
# The views (docs/method.md §5). Notation: p_k = stored probability of label k, K = prompts.scale.
# --------------------------------------------------------------------------------------------
def _token_sql(max_scale: int, formula: Formula) -> str:
    """token_scores, with both formula variants; `s_token` is the chosen one.

    The K-wide expressions are written out for k = 1..max_scale (the largest K of the chosen
    prompts); terms with k > K are NULL and drop out of every sum, max and argmax.
    """
    ks = range(1, max_scale + 1)
    mask = ",\n           ".join(f"CASE WHEN p.scale >= {k} THEN s.p{k} END AS p{k}" for k in ks)
    psum = " + ".join(f"coalesce(p{k}, 0)" for k in ks)
    # paper: P'_k = p_k / Σ_j p_j
    paper = ", ".join(f"p{k} / psum AS a{k}" for k in ks)
    # reference-code: P'_k = softmax_k(p_k / Σ_j p_j) = exp(a_k) / Σ_j exp(a_j); a_k ≤ 1, no overflow
    exps = ", ".join(f"exp(a{k}) AS e{k}" for k in ks)
    esum = " + ".join(f"coalesce(e{k}, 0)" for k in ks)
    soft = ", ".join(f"e{k} / esum AS b{k}" for k in ks)

    def argmax(v: str) -> str:  # S_base = argmax_k P'_k, 1-based; ties → the smaller k
        return "CASE " + " ".join(f"WHEN {v}{k} = max_{v} THEN {k}" for k in ks) + " END"

    def spread(v: str) -> str:  # Σ_{k=1..K} |P'_k − P'_{S_base}|, with P'_{S_base} = max_k P'_k
        return "(" + " + ".join(f"coalesce(abs({v}{k} - max_{v}), 0)" for k in ks) + ")"

    greatest = lambda v: "greatest(" + ", ".join(f"{v}{k}" for k in ks) + ")"  # noqa: E731
    chosen = "paper" if formula == Formula.PAPER else "reference"
    return f"""
-- Token level, per (sample, model, prompt) cell with status ok:
--   paper:          P'_k = p_k / Σ_j p_j
--   reference-code: P'_k = softmax_k(p_k / Σ_j p_j)
--   S_base  = argmax_k P'_k (1-based; ties → the smaller k)
--   S_token = S_base × (1/(K−1)) × Σ_{{k=1..K}} |P'_k − P'_{{S_base}}|
CREATE OR REPLACE TEMP VIEW token_scores AS
WITH cell AS (
    SELECT s.sample_id, s.model_id, m.model, s.prompt_id, p.set_name, p.position, p.scale,
           CAST(s.truncated AS INTEGER) AS truncated,
           {mask}
    FROM store.scores s
    JOIN chosen_models m ON m.model_id = s.model_id
    JOIN chosen_prompts p ON p.prompt_id = s.prompt_id
    WHERE s.status = '{CellStatus.OK}'
), normed AS (
    -- Σp = 0 cannot be normalised: NULLIF leaves the cell without a score (not rankable).
    SELECT *, {paper} FROM (SELECT *, NULLIF({psum}, 0) AS psum FROM cell)
), soft AS (
    SELECT *, {soft} FROM (SELECT *, {esum} AS esum FROM (SELECT *, {exps} FROM normed))
), maxed AS (
    SELECT *, {greatest('a')} AS max_a, {greatest('b')} AS max_b FROM soft
), based AS (
    SELECT *, {argmax('a')} AS base_a, {argmax('b')} AS base_b FROM maxed
)
SELECT sample_id, model_id, model, prompt_id, set_name, position, scale,
       base_{"a" if formula == Formula.PAPER else "b"} AS s_base,
       base_a * {spread('a')} / (scale - 1) AS s_token_paper,
       base_b * {spread('b')} / (scale - 1) AS s_token_reference,
       s_token_{chosen} AS s_token,
       coalesce(psum, 0) AS mass,  -- Σ_k p_k: how much the rater answers with a label at all
       max_{"a" if formula == Formula.PAPER else "b"} AS p_max,  -- max_k P'_k of the chosen formula
       truncated
FROM based
"""


def s_sent_sql(alpha: float) -> str:
    """S_sent = mean(S_token) / (1 + α × std_pop(S_token)), as an aggregate over `s_token`."""
    return f"avg(s_token) / (1 + {float(alpha)!r} * stddev_pop(s_token))"


def _views_sql(alpha: float, n_prompts: int, n_models: int, top: float) -> str:
    return f"""
-- Sentence level, per (sample, model) over the K' prompts of the set (population std, ddof 0):
--   S_sent = mean_i(S_token_i) / (1 + α × std_i(S_token_i)),   α = {alpha!r}
-- Only pairs with all K' = {n_prompts} cells scored enter.
CREATE OR REPLACE TEMP VIEW sentence_scores AS
SELECT sample_id, model_id, any_value(model) AS model, count(s_token) AS n_prompts,
       {s_sent_sql(alpha)} AS s_sent
FROM token_scores
GROUP BY sample_id, model_id
HAVING count(s_token) = {n_prompts};

-- Model level, per sample over the N chosen models:
--   S_model = Σ_m (θ_m / Σ_n θ_n) × S_sent_m,  θ = chosen_models.theta (share = θ/Σθ)
-- Only samples with a sentence score from all N = {n_models} models enter.
CREATE OR REPLACE TEMP VIEW model_scores AS
SELECT s.sample_id, count(*) AS n_models, sum(m.share * s.s_sent) AS s_model
FROM sentence_scores s JOIN chosen_models m ON m.model_id = s.model_id
GROUP BY s.sample_id
HAVING count(*) = {n_models};

-- Ranking per dataset. Tie rule: higher S_model first, then the earlier dataset position.
-- percentile = rank / (rankable samples of the dataset): the top 20 % is percentile <= 0.2.
CREATE OR REPLACE TEMP VIEW ranking AS
SELECT d.name AS dataset, ds.dataset_id, ds.sample_id, ds.position, ms.s_model,
       row_number() OVER w AS rank,
       row_number() OVER w / count(*) OVER (PARTITION BY ds.dataset_id) AS percentile
FROM model_scores ms
JOIN store.dataset_samples ds ON ds.sample_id = ms.sample_id
JOIN store.datasets d ON d.id = ds.dataset_id
WINDOW w AS (PARTITION BY ds.dataset_id ORDER BY ms.s_model DESC, ds.position ASC);

-- Selective Alpaca: the top share ({top!r}) of each dataset's rankable samples, in Alpaca format.
-- Kept: rank <= floor(share × rankable), at least one (the 1e-9 absorbs binary rounding).
CREATE OR REPLACE TEMP VIEW selective_alpaca AS
SELECT r.dataset, r.rank, r.sample_id, s.instruction, s.input, s.output, r.s_model
FROM (SELECT *, count(*) OVER (PARTITION BY dataset_id) AS n_rankable FROM ranking) r
JOIN store.samples s ON s.id = r.sample_id
WHERE r.rank <= {top_share_sql(top, "r.n_rankable")};
"""


# --------------------------------------------------------------------------------------------
# Rater health: can the ratings be trusted? (thresholds and warnings: `selectit.health`)
# --------------------------------------------------------------------------------------------
#: The samples a health figure is computed over: (dataset, sample_id, response_chars).
DATASET_SCOPE = """
SELECT d.name AS dataset, ds.sample_id, length(s.output) AS response_chars
FROM store.dataset_samples ds JOIN store.datasets d ON d.id = ds.dataset_id JOIN store.samples s ON s.id = ds.sample_id
"""
#: Every stored sample of any dataset once, as the dataset '*' (what `selectit status` reports).
ALL_SAMPLES_SCOPE = """
SELECT '*' AS dataset, s.id AS sample_id, length(s.output) AS response_chars
FROM store.samples s WHERE s.id IN (SELECT sample_id FROM store.dataset_samples)
"""


def _avg_rank(value: str, partition: str) -> str:
    """The rank of `value` within `partition`, tied values sharing their mean rank (as
    scipy.stats.rankdata). Values are compared at 12 decimals: two ways of summing the same
    probabilities can differ in the last bit, and that must not break a tie."""
    v = f"round({value}, 12)"
    return (f"(rank() OVER (PARTITION BY {partition} ORDER BY {v}) "
            f"+ (count(*) OVER (PARTITION BY {partition}, {v}) - 1) / 2.0)")


def _rho(rx: str, ry: str) -> str:
    """Spearman ρ as the Pearson correlation of the ranks; NULL when a side is constant (ρ
    undefined) or under 3 samples."""
    return f"CASE WHEN count(*) >= 3 AND var_pop({rx}) > 0 AND var_pop({ry}) > 0 THEN corr({rx}, {ry}) END"


def _cell_figures(keys: str) -> str:
    """Label mass, decisiveness, collapse and truncation over the health cells, per `keys`.

    collapse_base is the most common S_base (ties → the smaller), collapse_share its share.
    """
    return f"""
    SELECT {keys}, count(*) AS cells, count(DISTINCT sample_id) AS samples, any_value(scale) AS scale,
           median(mass) AS mass_median, quantile_cont(mass, 0.1) AS mass_p10, avg(p_max) AS mean_max_p,
           avg(truncated) AS truncated_share
    FROM health_cells GROUP BY {keys}"""


def health_sql(scope: str, params: Params) -> str:
    """The rater health figures over the samples of `scope` (see `DATASET_SCOPE`), one row per
    (dataset, level, model, prompt): level `prompt` (one prompt of a model), `model` (all its
    prompts) and `fusion` (the chosen models together; model NULL). Columns:

    cells (usable cells counted), samples, scale K, mass_median / mass_p10 (median and 10th
    percentile of Σ_k p_k), mean_max_p (mean max_k P'_k), collapse_base / collapse_share (the most
    common S_base and the share of cells that get it), truncated_share, rho_prompts (median
    Spearman ρ of S_token between two prompts of the model, over the pairs; for a prompt: the
    pairs it is in), rho_models (median ρ of S_sent between two models; for a model: its pairs),
    rho_length (ρ of S_sent — S_model for the fusion row — with the response's length in
    characters), rho_pairs (how many pairs the median is over). ρ between prompts is over the
    samples the model scored with every prompt, ρ between models over the samples every chosen
    model scored; the figures use the connection's formula, α and models.
    """
    # Ranks are taken once per prompt (per model) over a fixed set of samples, so every pair is
    # a join and a correlation, not a sort: S_token over the samples the model scored with every
    # prompt (those with an S_sent), S_sent over the samples every chosen model scored.
    mode = """(SELECT {keys}, first(s_base ORDER BY n DESC, s_base) AS collapse_base, max(n) / sum(n) AS collapse_share
               FROM (SELECT {keys}, s_base, count(*) AS n FROM health_cells WHERE s_base IS NOT NULL
                     GROUP BY {keys}, s_base) GROUP BY {keys})"""
    # MATERIALIZED: each is read several times below; inlined, every read would scan the store again.
    return f"""
WITH scope AS MATERIALIZED ({scope}),
health_cells AS MATERIALIZED (
    SELECT sc.dataset, sc.response_chars, t.* FROM token_scores t JOIN scope sc USING (sample_id)
), health_sent AS MATERIALIZED (  -- sentence_scores' S_sent, from the cells above (no second scan)
    SELECT dataset, model_id, sample_id, any_value(response_chars) AS response_chars,
           {s_sent_sql(params.alpha)} AS s_sent
    FROM health_cells GROUP BY dataset, model_id, sample_id HAVING count(s_token) = {len(params.prompts)}
), health_model AS (  -- S_model as the model_scores view computes it, from the sentence scores above
    SELECT h.dataset, h.sample_id, any_value(h.response_chars) AS response_chars, sum(m.share * h.s_sent) AS s_model
    FROM health_sent h JOIN chosen_models m USING (model_id)
    GROUP BY h.dataset, h.sample_id HAVING count(*) = (SELECT count(*) FROM chosen_models)
), token_ranks AS MATERIALIZED (
    SELECT c.dataset, c.model_id, c.prompt_id, c.position, c.sample_id,
           {_avg_rank("c.s_token", "c.dataset, c.model_id, c.prompt_id")} AS r
    FROM health_cells c SEMI JOIN health_sent h USING (dataset, model_id, sample_id)
), sent_ranks AS MATERIALIZED (
    SELECT dataset, model_id, sample_id,
           {_avg_rank("s_sent", "dataset, model_id")} AS r_sent,
           {_avg_rank("response_chars", "dataset, model_id")} AS r_len
    FROM health_sent h
), shared_ranks AS (  -- S_sent ranked over the samples every chosen model scored
    SELECT dataset, model_id, sample_id, {_avg_rank("s_sent", "dataset, model_id")} AS r
    FROM health_sent h SEMI JOIN health_model USING (dataset, sample_id)
), prompt_pairs AS (
    SELECT a.dataset, a.model_id, a.prompt_id AS pa, b.prompt_id AS pb, count(*) AS n, {_rho("a.r", "b.r")} AS rho
    FROM token_ranks a JOIN token_ranks b ON a.dataset = b.dataset AND a.model_id = b.model_id
         AND a.sample_id = b.sample_id AND a.position < b.position
    GROUP BY ALL
), model_pairs AS (
    SELECT a.dataset, a.model_id AS ma, b.model_id AS mb, count(*) AS n, {_rho("a.r", "b.r")} AS rho
    FROM shared_ranks a JOIN shared_ranks b ON a.dataset = b.dataset AND a.sample_id = b.sample_id
         AND a.model_id < b.model_id
    GROUP BY ALL
), sent_length AS (
    SELECT dataset, model_id, count(*) AS n, {_rho("r_sent", "r_len")} AS rho FROM sent_ranks GROUP BY ALL
), model_length AS (
    SELECT dataset, count(*) AS n, {_rho("rs", "rl")} AS rho FROM (
        SELECT dataset, {_avg_rank("s_model", "dataset")} AS rs, {_avg_rank("response_chars", "dataset")} AS rl
        FROM health_model) GROUP BY ALL
), per_prompt AS ({_cell_figures("dataset, model_id, prompt_id")}
), per_model AS ({_cell_figures("dataset, model_id")}
), prompt_rho AS (
    SELECT dataset, model_id, prompt_id, median(rho) AS rho_prompts, count(rho) AS rho_pairs
    FROM (SELECT dataset, model_id, pa AS prompt_id, rho FROM prompt_pairs
          UNION ALL SELECT dataset, model_id, pb, rho FROM prompt_pairs)
    GROUP BY dataset, model_id, prompt_id
), model_rho AS (
    SELECT dataset, model_id, median(rho) AS rho_prompts, count(rho) AS rho_pairs FROM prompt_pairs GROUP BY ALL
), model_agree AS (
    SELECT dataset, model_id, median(rho) AS rho_models FROM (
        SELECT dataset, ma AS model_id, rho FROM model_pairs UNION ALL SELECT dataset, mb, rho FROM model_pairs)
    GROUP BY ALL
)
SELECT f.dataset, 'prompt' AS level, f.model_id, m.model, p.set_name AS prompt_set, f.prompt_id, p.position,
       f.cells, f.samples, f.scale, f.mass_median, f.mass_p10, f.mean_max_p, c.collapse_base, c.collapse_share,
       f.truncated_share, r.rho_prompts, NULL::DOUBLE AS rho_models, NULL::DOUBLE AS rho_length, r.rho_pairs
FROM per_prompt f
JOIN chosen_models m USING (model_id)
JOIN chosen_prompts p USING (prompt_id)
LEFT JOIN {mode.format(keys="dataset, model_id, prompt_id")} c USING (dataset, model_id, prompt_id)
LEFT JOIN prompt_rho r USING (dataset, model_id, prompt_id)
UNION ALL
SELECT f.dataset, 'model', f.model_id, m.model, (SELECT any_value(set_name) FROM chosen_prompts), NULL, NULL,
       f.cells, f.samples, f.scale, f.mass_median, f.mass_p10, f.mean_max_p, c.collapse_base, c.collapse_share,
       f.truncated_share, r.rho_prompts, a.rho_models, l.rho, r.rho_pairs
FROM per_model f
JOIN chosen_models m USING (model_id)
LEFT JOIN {mode.format(keys="dataset, model_id")} c USING (dataset, model_id)
LEFT JOIN model_rho r USING (dataset, model_id)
LEFT JOIN model_agree a USING (dataset, model_id)
LEFT JOIN sent_length l USING (dataset, model_id)
UNION ALL
SELECT f.dataset, 'fusion', NULL, NULL, (SELECT any_value(set_name) FROM chosen_prompts), NULL, NULL,
       f.cells, coalesce(l.n, 0), NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       (SELECT median(rho) FROM model_pairs mp WHERE mp.dataset = f.dataset), l.rho,
       (SELECT count(rho) FROM model_pairs mp WHERE mp.dataset = f.dataset)
FROM (SELECT dataset, sum(cells) AS cells FROM per_model GROUP BY dataset) f
LEFT JOIN model_length l USING (dataset)
"""


@dataclass(frozen=True)
class ChosenModel:
    model_id: int
    name: str
    theta: float
    share: float


@dataclass(frozen=True)
class ChosenPrompt:
    prompt_id: int
    set_name: str
    position: int
    scale: int


@dataclass(frozen=True)
class Params:
    """What a ranking was computed with (stored in a frozen selection's params)."""

    alpha: float
    formula: str
    prompt_set: str
    models: tuple[ChosenModel, ...]
    prompts: tuple[ChosenPrompt, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "formula": self.formula,
            "prompt_set": self.prompt_set,
            "prompts": [[p.prompt_id, p.set_name, p.position, p.scale] for p in self.prompts],
            "models": [{"id": m.model_id, "name": m.name, "theta": m.theta, "share": m.share} for m in self.models],
            "tie_rule": TIE_RULE,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Params:
        """The parameters stored by `as_json` (e.g. in a frozen selection's params)."""
        models = tuple(ChosenModel(m["id"], m["name"], m["theta"], m["share"]) for m in raw["models"])
        return cls(raw["alpha"], raw["formula"], raw["prompt_set"], models, tuple(ChosenPrompt(*p) for p in raw["prompts"]))


def _choose_models(
    con: duckdb.DuckDBPyConnection, models: Sequence[str] | None, weights: dict[str, float] | None
) -> tuple[ChosenModel, ...]:
    rows = con.execute(
        "SELECT id, name, weight, n_params FROM store.models WHERE CAST(active AS INTEGER) = 1 ORDER BY name, id"
    ).fetchall()
    active = sorted({r[1] for r in rows})
    if models:
        unknown = [m for m in models if m not in active]
        if unknown:
            raise NoSuchModel.named(unknown, active)
        rows = [r for r in rows if r[1] in set(models)]
    weights = dict(weights or {})
    unknown = sorted(set(weights) - {r[1] for r in rows})
    if unknown:
        raise FusionError(
            f"--weights names {', '.join(map(repr, unknown))}, which is not among the chosen models "
            f"({', '.join(sorted({r[1] for r in rows})) or 'none'})"
        )
    thetas = []
    for model_id, name, weight, n_params in rows:
        theta = weights.get(name, weight if weight is not None else n_params)
        if theta is None and len(rows) == 1:
            theta = 1.0  # a model alone has the whole weight, whatever its θ
        if theta is None:
            raise FusionError(f"model {name!r} has no weight θ: it is served by an endpoint, whose parameter count "
                              f"is unknown. Give it one with --weights {name}=θ, or re-add it with --weight θ or "
                              f"--params N")
        theta = float(theta)
        if not math.isfinite(theta) or theta <= 0:
            raise FusionError(f"the weight θ of model {name!r} must be a positive number, not {theta!r}")
        thetas.append((model_id, name, theta))
    if not thetas:
        return ()
    # Only the ratios count: scaled by the largest θ first, the sum cannot overflow (1e308 + 1e308).
    largest = max((t for _, _, t in thetas), default=1.0)
    scaled = [t / largest for _, _, t in thetas]
    total = sum(scaled)
    if not (math.isfinite(total) and total > 0):
        raise FusionError(f"the weights θ ({', '.join(f'{n}={t!r}' for _, n, t in thetas)}) do not sum to a "
                          f"finite positive number; give weights of similar size, e.g. --weights a=1,b=2")
    return tuple(ChosenModel(i, n, t, x / total) for (i, n, t), x in zip(thetas, scaled))


def _choose_prompts(con: duckdb.DuckDBPyConnection, prompt_set: str) -> tuple[ChosenPrompt, ...]:
    rows = con.execute(
        "SELECT id, set_name, position, scale FROM store.prompts "
        f"WHERE CAST(active AS INTEGER) = 1 AND set_name = {_sql_str(prompt_set)} ORDER BY position, id"
    ).fetchall()
    for _, _, _, scale in rows:
        if not 2 <= scale <= MAX_SCALE:
            raise FusionError(f"prompt set {prompt_set!r} has scale {scale}; the fusion needs 2 <= K <= {MAX_SCALE}")
    return tuple(ChosenPrompt(*r) for r in rows)


def prompt_sets(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The names of the prompt sets with active prompts."""
    rows = con.execute(
        "SELECT DISTINCT set_name FROM store.prompts WHERE CAST(active AS INTEGER) = 1 ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def connect(
    db_url: str | None,
    *,
    alpha: float = DEFAULT_ALPHA,
    formula: str = DEFAULT_FORMULA,
    models: list[str] | None = None,
    prompt_set: str | None = None,
    weights: dict[str, float] | None = None,
    top: float = DEFAULT_TOP,
) -> duckdb.DuckDBPyConnection:
    """DuckDB with the curation database attached read-only as `store` and the fusion views.

    `models`: names of active models (default: every active model); `prompt_set`: default
    `DEFAULT_PROMPT_SET` (a set that does not exist gives empty views: `rank` says so); `weights`:
    {model name: θ} overriding models.weight / n_params; `top`: the share in `selective_alpaca`.
    The chosen parameters are on the connection as `con.selectit_params` (a `Params`).
    """
    formula, alpha, top = validate_formula(formula), validate_alpha(alpha), validate_top(top)
    if prompt_set is not None:  # "" is a mistake, not the default
        prompt_set = valid_name(prompt_set, "prompt set")
    if models is not None and len(set(models)) != len(models):
        raise FusionError(f"--models names a model twice: {', '.join(models)}")
    con = attach(db_url)
    try:
        chosen_models = _choose_models(con, models, weights)
        set_name = prompt_set or DEFAULT_PROMPT_SET
        chosen_prompts = _choose_prompts(con, set_name)
        if prompt_set and not chosen_prompts:
            raise FusionError(
                f"no active prompt set named {prompt_set!r} (sets: {', '.join(prompt_sets(con)) or 'none'})"
            )
        _define_views(con, Params(alpha, formula.value, set_name, chosen_models, chosen_prompts), top)
    except BaseException:
        con.close()
        raise
    return con


def _define_views(con: duckdb.DuckDBPyConnection, params: Params, top: float) -> None:
    """The chosen_models / chosen_prompts tables, the fusion views and fusion_params for `params`."""
    # Literals, not `?` parameters: DuckDB imports pandas (about 1 s) to bind parameters.
    con.execute("CREATE TEMP TABLE chosen_models (model_id BIGINT, model VARCHAR, theta DOUBLE, share DOUBLE)")
    for m in params.models:
        con.execute(
            f"INSERT INTO chosen_models VALUES ({int(m.model_id)}, {_sql_str(m.name)}, {m.theta!r}, {m.share!r})"
        )
    con.execute("CREATE TEMP TABLE chosen_prompts (prompt_id BIGINT, set_name VARCHAR, position INTEGER, scale INTEGER)")
    for p in params.prompts:
        con.execute(
            f"INSERT INTO chosen_prompts VALUES ({int(p.prompt_id)}, {_sql_str(p.set_name)}, {int(p.position)}, {int(p.scale)})"
        )
    max_scale = max((p.scale for p in params.prompts), default=2)
    con.execute(_token_sql(max_scale, Formula(params.formula)))
    con.execute(_views_sql(float(params.alpha), len(params.prompts), len(params.models), top))
    con.execute(f"CREATE OR REPLACE TEMP VIEW rater_health AS {health_sql(DATASET_SCOPE, params)}")
    # The parameters travel with the connection (and are visible to ad-hoc SQL).
    con.execute(f"CREATE TEMP TABLE fusion_params AS SELECT {_sql_str(json.dumps(params.as_json()))}::JSON AS params")


def connect_pinned(db_url: str | None, params: Params, top: float = DEFAULT_TOP) -> duckdb.DuckDBPyConnection:
    """Like `connect`, but with exactly the model and prompt versions (and θ) of `params`, active
    or not: a frozen selection's scores are recomputed as they were."""
    con = attach(db_url)
    try:
        _define_views(con, params, validate_top(top))
    except BaseException:
        con.close()
        raise
    return con


def params_of(con: duckdb.DuckDBPyConnection) -> Params:
    """The parameters `connect()` fixed on this connection."""
    raw = json.loads(con.execute("SELECT params::VARCHAR FROM fusion_params").fetchone()[0])
    models = tuple(
        ChosenModel(m["id"], m["name"], m["theta"], m["share"]) for m in raw["models"]
    )
    prompts = tuple(ChosenPrompt(*p) for p in raw["prompts"])
    return Params(raw["alpha"], raw["formula"], raw["prompt_set"], models, prompts)


# --------------------------------------------------------------------------------------------
# Dataset lookup and coverage
# --------------------------------------------------------------------------------------------
def dataset_id(con: duckdb.DuckDBPyConnection, dataset: str) -> int:
    """The id of the dataset named `dataset` (in NFC, as stored), or an error listing the names."""
    dataset = valid_name(dataset, "dataset")
    row = con.execute(f"SELECT id FROM store.datasets WHERE name = {_sql_str(dataset)}").fetchone()
    if row is None:
        names = [r[0] for r in con.execute("SELECT name FROM store.datasets ORDER BY name").fetchall()]
        raise NoSuchDataset.named(dataset, names)
    return int(row[0])


def require_scoring_setup(con: duckdb.DuckDBPyConnection) -> Params:
    """The connection's parameters, or an error when no model or no prompt set is chosen."""
    params = params_of(con)
    if not params.prompts:
        sets = prompt_sets(con)
        raise FusionError(
            f"the prompt set {params.prompt_set!r} does not exist yet "
            f"(sets with active prompts: {', '.join(sets) or 'none'}); score the dataset first "
            f"(`selectit score`), or name an existing set with --prompt-set"
        )
    if not params.models:
        raise FusionError("no active model is registered; add one with `selectit model add` and score the dataset")
    return params


@dataclass(frozen=True)
class ModelCoverage:
    """Cells and samples of one model version over the active prompts of one prompt set.

    A cell is done iff its status is `ok`, failed iff `failed`, missing otherwise; a sample is
    complete when all its cells are done, failed when one failed, else missing.
    """

    model: str
    model_id: int
    prompt_set: str
    n_samples: int
    n_prompts: int
    ok: int  # cells done
    failed: int  # cells failed
    samples_complete: int
    samples_failed: int

    @property
    def missing(self) -> int:
        """Cells never scored."""
        return self.n_samples * self.n_prompts - self.ok - self.failed

    @property
    def samples_missing(self) -> int:
        """Samples with a cell never scored and none failed."""
        return self.n_samples - self.samples_complete - self.samples_failed


@dataclass(frozen=True)
class Coverage:
    """How much of a dataset can be ranked with the chosen models and prompts, and why not."""

    dataset: str
    n_samples: int
    n_rankable: int
    n_cells_per_sample: int
    samples_with_failed: int  # not rankable: at least one failed cell
    samples_with_missing: int  # not rankable: some cell never scored (and none failed)
    models: tuple[ModelCoverage, ...] = field(default_factory=tuple)
    #: ok cells scored in top-k mode with a label outside the server's top K (counted as 0)
    cells_partial: int = 0

    @property
    def n_not_rankable(self) -> int:
        return self.n_samples - self.n_rankable


def _cell_coverage(
    con: duckdb.DuckDBPyConnection,
    dataset: int | None,
    models: Sequence[tuple[int, str]],
    prompts: Sequence[tuple[int, str]],
) -> tuple[int, list[ModelCoverage]]:
    """The one coverage computation: (samples in scope, per model × prompt set counts).

    `dataset`: a dataset id, or None for the samples of every dataset. `models`: (id, name) of
    model versions; `prompts`: (id, set name) of prompt versions. Leaves the temp table
    `coverage_cells` (sample_id, model_id, set_name, n_ok, n_failed) for per-sample questions.
    """
    scope = (f"SELECT sample_id FROM store.dataset_samples WHERE dataset_id = {int(dataset)}" if dataset is not None
             else "SELECT DISTINCT sample_id FROM store.dataset_samples")
    n_samples = int(con.execute(f"SELECT count(*) FROM ({scope})").fetchone()[0])
    model_rows = ", ".join(f"({int(i)})" for i, _ in models) or "(NULL)"
    prompt_rows = ", ".join(f"({int(i)}, {_sql_str(name)})" for i, name in prompts) or "(NULL, NULL)"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE coverage_cells AS
        SELECT s.sample_id, s.model_id, p.set_name,
               count(*) FILTER (WHERE s.status = '{CellStatus.OK}') AS n_ok,
               count(*) FILTER (WHERE s.status = '{CellStatus.FAILED}') AS n_failed,
               count(*) FILTER (WHERE s.status = '{CellStatus.OK}'
                                AND COALESCE(CAST(s.partial AS INTEGER), 0) = 1) AS n_partial
        FROM store.scores s
        JOIN (VALUES {model_rows}) m(model_id) ON m.model_id = s.model_id
        JOIN (VALUES {prompt_rows}) p(prompt_id, set_name) ON p.prompt_id = s.prompt_id
        WHERE s.sample_id IN ({scope})
        GROUP BY s.sample_id, s.model_id, p.set_name
        """
    )
    k_of: dict[str, int] = {}
    for _, name in prompts:
        k_of[name] = k_of.get(name, 0) + 1
    counts = {
        (int(m), str(name)): tuple(int(x or 0) for x in rest)
        for m, name, *rest in con.execute(
            "SELECT c.model_id, c.set_name, sum(n_ok), sum(n_failed), count(*) FILTER (WHERE n_ok = k.k), "
            "count(*) FILTER (WHERE n_failed > 0) FROM coverage_cells c "
            f"JOIN (VALUES {', '.join(f'({_sql_str(n)}, {k})' for n, k in k_of.items()) or '(NULL, 0)'}) "
            "k(set_name, k) ON k.set_name = c.set_name GROUP BY c.model_id, c.set_name"
        ).fetchall()
    }
    rows = [
        ModelCoverage(name, int(model_id), set_name, n_samples, k, *counts.get((int(model_id), set_name), (0, 0, 0, 0)))
        for model_id, name in models
        for set_name, k in k_of.items()
    ]
    return n_samples, rows


def coverage(con: duckdb.DuckDBPyConnection, dataset: str) -> Coverage:
    """Cells done / missing / failed per chosen model, and rankable samples, for one dataset."""
    params = params_of(con)
    ds = dataset_id(con, dataset)
    n_samples, models = _cell_coverage(con, ds, [(m.model_id, m.name) for m in params.models],
                                       [(p.prompt_id, p.set_name) for p in params.prompts])
    expected = len(params.prompts) * len(params.models)
    complete, with_failed, partial = con.execute(
        f"SELECT count(*) FILTER (WHERE ok = {int(expected)}), count(*) FILTER (WHERE failed > 0), "
        "COALESCE(sum(partial), 0) FROM (SELECT sample_id, sum(n_ok) AS ok, sum(n_failed) AS failed, "
        "sum(n_partial) AS partial FROM coverage_cells GROUP BY sample_id)"
    ).fetchone()
    n_rankable = int(complete) if expected else 0
    # A sample can only be ranked with all cells ok; the ranking may still drop one whose stored
    # probabilities sum to 0 (cannot be normalised) — those count as rankable-in-coverage only.
    return Coverage(
        dataset=dataset,
        n_samples=n_samples,
        n_rankable=n_rankable,
        n_cells_per_sample=expected,
        samples_with_failed=int(with_failed),
        samples_with_missing=n_samples - n_rankable - int(with_failed),
        models=tuple(models),
        cells_partial=int(partial),
    )


def scoring_coverage(con: duckdb.DuckDBPyConnection) -> list[ModelCoverage]:
    """Per active model version × active prompt set, over the samples of every dataset.

    `con` is any connection with the store attached (`attach` or `connect`); `selectit status`
    shows these rows, with the same rule as `coverage`.
    """
    models = con.execute(
        "SELECT id, name FROM store.models WHERE CAST(active AS INTEGER) = 1 ORDER BY name, id"
    ).fetchall()
    prompts = con.execute(
        "SELECT id, set_name FROM store.prompts WHERE CAST(active AS INTEGER) = 1 ORDER BY set_name, position, id"
    ).fetchall()
    return _cell_coverage(con, None, models, prompts)[1]


def store_coverage(db_url: str | None) -> list[ModelCoverage]:
    """`scoring_coverage` of the database at `db_url`, on a connection of its own."""
    con = attach(db_url)
    try:
        return scoring_coverage(con)
    finally:
        con.close()


# --------------------------------------------------------------------------------------------
# Ad-hoc SQL
# --------------------------------------------------------------------------------------------
#: Statement types the console runs; all others (COPY, EXPORT, CALL, SET, ATTACH, LOAD, PRAGMA
#: settings, transactions, …) are refused. Writes to `store.*` fail: it is attached READ_ONLY.
_ALLOWED_STATEMENTS = {"SELECT", "EXPLAIN", "CREATE", "INSERT", "UPDATE", "DELETE", "DROP", "ALTER"}
#: Functions the console refuses wherever they are called: they run SQL given as a string (past
#: this check), send raw SQL to the server, or read files through the extensions' own I/O.
_REFUSED_FUNCTIONS = {"query", "query_table", "json_execute_serialized_sql", "enable_logging",
                      "disable_logging", "truncate_duckdb_logs", "getenv", "glob", "sniff_csv",
                      "checkpoint", "force_checkpoint"}
_REFUSED_PREFIXES = ("postgres_", "sqlite_", "read_", "parquet_")
READ_ONLY_MESSAGE = "the curation database is read-only here"


_NAME = re.compile(r'"(?:[^"]|"")*"|[\w$]+')


def _function_calls(sql: str) -> list[str]:
    """Names called as functions in `sql`, lower-case: every name token followed by `(`.

    DuckDB's own tokenizer is used, so a name inside a string literal, a quoted alias or a
    comment is not a call, and `"QUERY" /* x */ (…)` or `system.main.query(…)` are.
    """
    tokens = duckdb.tokenize(sql)
    names = []
    for (start, kind), nxt in zip(tokens, tokens[1:] + [(len(sql), None)]):
        if kind not in (duckdb.token_type.identifier, duckdb.token_type.keyword):
            continue
        after = nxt[0]
        if nxt[1] != duckdb.token_type.operator or not sql[after:after + 1] == "(":
            continue
        found = _NAME.match(sql, start)
        if found is None:
            continue
        name = found.group(0)
        if name.startswith('"'):
            name = name[1:-1].replace('""', '"')
        names.append(name.lower())
    return names


_PARSER: duckdb.DuckDBPyConnection | None = None


def _sealed_parser() -> duckdb.DuckDBPyConnection:
    """A sealed in-memory DuckDB that only parses: DuckDB expands some statements while parsing
    them (`IMPORT DATABASE 'dir'` reads dir/schema.sql), so the check must open no file either."""
    global _PARSER
    if _PARSER is None:
        parser = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
        seal(parser)
        _PARSER = parser
    return _PARSER


def _explained(query: str) -> str:
    """The statement an `EXPLAIN [ANALYZE] [(options)] …` statement explains (and may run)."""
    tokens = [(start, kind) for start, kind in duckdb.tokenize(query) if kind != duckdb.token_type.comment]
    i = 1  # past EXPLAIN
    while i < len(tokens):
        start, kind = tokens[i]
        word = query[start:].split(None, 1)[0].upper() if kind == duckdb.token_type.keyword else ""
        if word in ("ANALYZE", "ANALYSE", "VERBOSE"):
            i += 1
        elif query[start] == "(" and kind == duckdb.token_type.operator:
            depth = 0
            while i < len(tokens):
                text = query[tokens[i][0]] if tokens[i][1] == duckdb.token_type.operator else ""
                depth += (text == "(") - (text == ")")
                i += 1
                if depth == 0:
                    break
        else:
            return query[start:]
    return ""


def _check_statement(parser: duckdb.DuckDBPyConnection, statement: Any) -> None:
    kind = str(statement.type).rsplit(".", 1)[-1].upper()
    if kind not in _ALLOWED_STATEMENTS:
        if kind == "???":  # e.g. UPDATE EXTENSIONS
            kind = " ".join(statement.query.split()[:2]).upper()
        raise ReadOnlyError(f"{READ_ONLY_MESSAGE}: {kind} statements are not allowed in `selectit sql`")
    if kind == "EXPLAIN":  # EXPLAIN ANALYZE runs the statement: the same rules apply to it
        explained = _explained(statement.query)
        inner = _parse(parser, explained) if explained.strip() else []
        if not inner:
            raise ReadOnlyError(f"{READ_ONLY_MESSAGE}: the console cannot tell what this EXPLAIN explains")
        for one in inner:
            _check_statement(parser, one)


def _parse(parser: duckdb.DuckDBPyConnection, sql: str) -> list[Any]:
    try:
        return parser.extract_statements(sql)
    except duckdb.PermissionException as exc:
        raise ReadOnlyError(f"{READ_ONLY_MESSAGE}, and the console reads and writes no files: "
                            f"{_one_line(exc)}") from None
    except duckdb.Error as exc:
        raise FusionError(f"SQL error: {_one_line(exc)}") from None


def check_console_sql(sql: str) -> list[str]:
    """The statements of `sql`, or a `ReadOnlyError` for anything the console refuses.

    Parsed on a sealed connection (nothing is read while checking); an `EXPLAIN` is checked by
    the statement it explains.
    """
    parser = _sealed_parser()
    statements = _parse(parser, sql)
    if not statements:
        raise FusionError("no SQL statement given; e.g. `selectit sql \"SELECT * FROM ranking LIMIT 5\"`")
    for statement in statements:
        _check_statement(parser, statement)
    for name in _function_calls(sql):
        if name in _REFUSED_FUNCTIONS or name.startswith(_REFUSED_PREFIXES):
            raise ReadOnlyError(
                f"{READ_ONLY_MESSAGE}: {name}() is not allowed in `selectit sql` (it reads files or runs SQL "
                f"the console cannot check); query the views and store.<table> instead"
            )
    return [s.query for s in statements]


def seal(con: duckdb.DuckDBPyConnection) -> None:
    """No file at all from here on (not even the store's own), and no setting can change again."""
    if con.execute("SELECT current_setting('lock_configuration')").fetchone()[0]:
        return
    con.execute("SET enable_external_access = false")
    con.execute("SET disabled_filesystems = 'LocalFileSystem'")
    con.execute("SET lock_configuration = true")


def run_sql(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run ad-hoc SQL on a fusion connection: (column names, rows) of the last statement.

    Only queries and statements on one's own temporary tables run: writes to `store.*` fail
    (attached READ_ONLY), and the connection is sealed first — no file can be read or written,
    no setting changed. Statements that load code, attach, copy or export, and the functions
    that read files or send raw SQL to the server (`query()`, `postgres_*`, `sqlite_*`, `read_*`),
    are refused by parsing the SQL, never by matching its text.
    """
    check_console_sql(sql)
    seal(con)
    try:
        cursor = con.execute(sql)
        columns = [d[0] for d in cursor.description] if cursor.description else []
        rows = cursor.fetchall() if columns else []
    except duckdb.Error as exc:
        message = _one_line(exc)
        if "read-only" in message or "read only" in message:
            raise ReadOnlyError(f"{READ_ONLY_MESSAGE}: {message}") from exc
        if isinstance(exc, duckdb.PermissionException):
            raise ReadOnlyError(f"{READ_ONLY_MESSAGE}, and the console reads and writes no files: {message}") from exc
        raise FusionError(f"SQL error: {message}") from exc
    return columns, rows
