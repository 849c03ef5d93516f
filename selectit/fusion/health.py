"""Rater health: the figures of the `rater_health` view turned into warnings, with their thresholds.

SelectIT ranks data by how sure a rater is of its own rating; that is only as good as the rater.
The figures (`selectit.fusion.health_sql`) say how far a rater can be trusted; each has ONE
threshold here, and crossing it gives a warning line that names the rater and what to do.
`rank`, `select`, `export` and `report` print these lines on stderr; `diagnose` shows the table.

    >>> import selectit
    >>> store = selectit.open("selectit.db")                    # doctest: +SKIP
    >>> store.diagnose("alpaca").to_pandas()                     # doctest: +SKIP
    >>> for line in store.health_warnings("alpaca"): print(line)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import duckdb

from selectit.contract import valid_name
from selectit.fusion import views as fusion
from selectit.ranking import Ranking


@dataclass(frozen=True)
class Thresholds:
    """Where a figure turns into a warning (README: "Can I trust these ratings?")."""

    #: Median Σ_k p_k below this: the rater rarely answers with a label token at all.
    mass_median: float = 0.10
    #: 10th percentile of Σ_k p_k below this: on a tenth of the samples it all but ignores the labels.
    mass_p10: float = 0.01
    #: Mean max_k P'_k below this many times the uniform 1/K: the rater barely prefers any rating.
    max_p_over_uniform: float = 1.25
    #: Share of cells whose S_base is the most common value above this: the ratings barely separate.
    collapse_share: float = 0.90
    #: Median Spearman ρ between a model's prompts (or between models) below this: they disagree.
    rho_agreement: float = 0.20
    #: |Spearman ρ| of S_sent / S_model with the response length above this: mostly a length ranking.
    rho_length: float = 0.70
    #: Share of truncated cells above this: the rater did not see much of the data.
    truncated_share: float = 0.05
    #: ρ figures are only judged over at least this many samples (fewer say too little).
    min_samples_for_rho: int = 10
    #: Share of the top 20% taken by samples with a better-ranked near-duplicate above this: a
    #: cluster of near-copies fills the top (docs/dedup.md; `--dedup near` keeps one of each).
    near_duplicate_top_share: float = 0.10


THRESHOLDS = Thresholds()

#: The one-word health of `selectit status`, in order of severity (the first that applies wins).
WORDS = ("no-labels", "collapsed", "undecided", "disagrees", "length", "truncated")


@dataclass(frozen=True)
class RaterWarning:
    """One warning: its one-word kind (see `WORDS`; `audit` for a failed audit), the model it is about (None:
    the fusion) and its text."""

    kind: str
    model: str | None
    text: str


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def judge(rows: Iterable[Mapping[str, Any]], t: Thresholds = THRESHOLDS) -> list[RaterWarning]:
    """The warnings for `rater_health` rows: each model's, then each of its prompts' (rows in the
    `diagnose` order) for a figure the model's own row does not already warn about — one prompt
    rating every sample "1" hides in its model's figures —, then the fusion's."""
    out: list[RaterWarning] = []
    model_kinds: dict[Any, set[str]] = {}
    for r in rows:
        name = r.get("model")
        if r["level"] in ("model", "prompt") and r["cells"]:
            found = _rater_warnings(r, t)
            if r["level"] == "model":
                model_kinds[name] = {w.kind for w in found}
            else:
                found = [w for w in found if w.kind not in model_kinds.get(name, set())]
            out += found
        elif r["level"] == "fusion" and (r["samples"] or 0) >= t.min_samples_for_rho:
            if r["rho_models"] is not None and r["rho_models"] < t.rho_agreement:
                out.append(RaterWarning("disagrees", None,
                    f"models disagree (median ρ of S_sent {r['rho_models']:.2f}) — S_model mixes unrelated "
                    f"rankings: rank with each model alone (`selectit rank --models NAME`) and keep those that agree"))
            if r["rho_length"] is not None and abs(r["rho_length"]) > t.rho_length:
                out.append(RaterWarning("length", None,
                    f"the ranking follows the response length (ρ of S_model {r['rho_length']:.2f}) — compare "
                    f"with a `selectit select NAME --by length` control"))
    return out


def _rater_warnings(r: Mapping[str, Any], t: Thresholds) -> list[RaterWarning]:
    """The warnings of one model row, or of one prompt row (the same thresholds, named for the prompt)."""
    name, k, out = r.get("model"), r["scale"] or 2, []
    prompt = r["level"] == "prompt"
    rater = f"prompt {r['position']} of rater {name}" if prompt else f"rater {name}"
    if r["mass_median"] is not None and r["mass_median"] < t.mass_median:
        out.append(RaterWarning("no-labels", name,
            f"{rater}: median label mass {r['mass_median']:.2g} — it rarely answers with a digit; its "
            f"ratings are mostly noise: check the prompt's label context or use a larger rater"))
    elif r["mass_p10"] is not None and r["mass_p10"] < t.mass_p10:
        out.append(RaterWarning("no-labels", name,
            f"{rater}: 10% of its cells put under {t.mass_p10:g} on the labels (p10 label mass "
            f"{r['mass_p10']:.2g}) — those ratings are noise: read them with `selectit sql` and check the "
            f"prompt on such samples"))
    if r["collapse_share"] is not None and r["collapse_share"] > t.collapse_share:
        out.append(RaterWarning("collapsed", name,
            f"{rater}: {_pct(r['collapse_share'])} of cells get S_base {r['collapse_base']} — the ratings "
            f"barely separate the data: try other prompts or a larger rater"))
    if r["mean_max_p"] is not None and r["mean_max_p"] < t.max_p_over_uniform / k:
        out.append(RaterWarning("undecided", name,
            f"{rater}: mean max P' {r['mean_max_p']:.2f} (uniform is {1 / k:.2f}) — it barely prefers "
            f"any rating: use a larger or instruction-tuned rater"))
    if r["rho_prompts"] is not None and r["samples"] >= t.min_samples_for_rho and r["rho_prompts"] < t.rho_agreement:
        out.append(RaterWarning("disagrees", name,
            f"{rater} disagrees with the other prompts (median ρ {r['rho_prompts']:.2f} over {r['rho_pairs']} "
            f"pairs) — rephrase it or leave it out of the prompt set (`selectit prompts import`)" if prompt else
            f"prompts of {name} disagree (median ρ {r['rho_prompts']:.2f} over {r['rho_pairs']} pairs) — "
            f"its S_sent averages unrelated ratings: keep the prompts that agree (a set of its own, "
            f"`selectit prompts import`) or use a larger rater"))
    if r["rho_length"] is not None and r["samples"] >= t.min_samples_for_rho and abs(r["rho_length"]) > t.rho_length:
        out.append(RaterWarning("length", name,
            f"{rater}: S_sent follows the response length (ρ {r['rho_length']:.2f}) — compare with a "
            f"`selectit select NAME --by length` control"))
    if r["truncated_share"] is not None and r["truncated_share"] > t.truncated_share:
        out.append(RaterWarning("truncated", name,
            f"{rater}: {_pct(r['truncated_share'])} of cells were truncated — it rated cut responses: "
            f"register it with a larger --max-tokens"))
    return out


def word(warnings: Iterable[RaterWarning], model: str) -> str:
    """`selectit status`'s one-word health of `model`: `ok`, or the most severe warning's kind."""
    kinds = {w.kind for w in warnings if w.model == model}
    return next((k for k in WORDS if k in kinds), "ok")


COLUMNS = ("dataset", "level", "model_id", "model", "prompt_set", "prompt_id", "position", "cells", "samples",
           "scale", "mass_median", "mass_p10", "mean_max_p", "collapse_base", "collapse_share", "truncated_share",
           "rho_prompts", "rho_models", "rho_length", "rho_pairs")

_ORDER = ("ORDER BY level = 'fusion', model, model_id, level = 'prompt', position, prompt_id")


def diagnose(con: duckdb.DuckDBPyConnection, dataset: str, *, prompts: bool = True) -> list[dict[str, Any]]:
    """The `rater_health` rows of `dataset` on a fusion connection: per model, its own row then
    one per prompt; the fusion row last. `prompts=False` leaves the prompt rows out (the
    warnings need only the others, and skipping them is cheaper)."""
    fusion.require_scoring_setup(con)
    fusion.dataset_id(con, dataset)  # an error naming the datasets when there is no such one
    name = fusion.sql_str(valid_name(dataset, "dataset"))
    levels = "" if prompts else " AND level <> 'prompt'"
    cur = con.execute(f"SELECT {', '.join(COLUMNS)} FROM rater_health WHERE dataset = {name}{levels} {_ORDER}")
    return [dict(zip(COLUMNS, row)) for row in cur.fetchall()]


#: The figures of a turn position (`turn_positions`), in a `diagnose` row of level ``turn``.
TURN_COLUMNS = ("dataset", "level", "model_id", "model", "position", "cells", "samples", "truncated_share",
                "mean_s_sent", "truncated")


def turn_positions(con: duckdb.DuckDBPyConnection, dataset: str) -> list[dict[str, Any]]:
    """Per model and turn position (1: a conversation's first rated assistant turn, counted from its
    start), over `dataset`'s samples that have more than one rated turn: the cells, the turns rated
    (samples), the mean S_sent and how many cells (and what share) were truncated — do later turns
    rate lower, are their histories cut? Empty when no sample has two rated turns. With
    ``--turns-agg last`` the views hold the last turns only, so only those positions show."""
    name = fusion.sql_str(valid_name(dataset, "dataset"))
    scope = ("SELECT ds.sample_id FROM store.dataset_samples ds JOIN store.datasets d ON d.id = ds.dataset_id "
             f"JOIN store.samples x ON x.id = ds.sample_id WHERE d.name = {name} AND x.n_turns > 1")
    cur = con.execute(f"""
WITH cells AS (
    SELECT t.model_id, t.n_turns - t.turn AS position, count(*) AS cells, sum(t.truncated) AS truncated
    FROM token_scores t WHERE t.sample_id IN ({scope}) GROUP BY ALL
), sent AS (
    SELECT s.model_id, any_value(s.model) AS model, s.n_turns - s.turn AS position, count(*) AS samples,
           avg(s.s_sent) AS mean_s_sent
    FROM sentence_scores s WHERE s.sample_id IN ({scope}) GROUP BY s.model_id, position
)
SELECT {name} AS dataset, 'turn' AS level, c.model_id, m.model, c.position, c.cells, coalesce(s.samples, 0),
       c.truncated / c.cells AS truncated_share, s.mean_s_sent, c.truncated
FROM cells c JOIN chosen_models m USING (model_id) LEFT JOIN sent s USING (model_id, position)
ORDER BY m.model, c.model_id, c.position""")
    return [dict(zip(TURN_COLUMNS, row)) for row in cur.fetchall()]


def store_words(db_url: str | None, sets: Iterable[str], dataset: str | None = None) -> dict[tuple[str, str], str]:
    """(model, prompt set) → one-word health (`selectit status`), for the active models and the
    prompt sets named: `diagnose`'s judgement (model and prompt rows) of `dataset`, or of every
    stored sample once (the twins of `selectit audit` left out) when it is None."""
    out: dict[tuple[str, str], str] = {}
    for set_name in sets:
        con = fusion.connect(db_url, Ranking(prompt_set=set_name))
        try:
            if dataset is not None:
                rows = diagnose(con, dataset)
            else:
                every_sample = fusion.health_sql(fusion.ALL_SAMPLES_SCOPE, fusion.params_of(con))
                cur = con.execute(f"SELECT {', '.join(COLUMNS)} FROM ({every_sample}) {_ORDER}")
                rows = [dict(zip(COLUMNS, row)) for row in cur.fetchall()]
        finally:
            con.close()
        found = judge(rows)
        for r in rows:
            if r["level"] == "model":
                out[(r["model"], set_name)] = word(found, r["model"])
    return out


def audit_warnings(con: duckdb.DuckDBPyConnection, dataset: str) -> list[RaterWarning]:
    """A failed audit of `dataset` (`selectit audit`) as one warning of the fusion; [] when it passed or there is none."""
    from selectit.fusion import audit

    text = audit.failure(con, dataset)
    return [] if text is None else [RaterWarning("audit", None, text)]


def warnings_for(db_url: str | None, dataset: str, ranking: Ranking) -> list[str]:
    """The warning lines for `dataset` under `ranking` (a failed audit's last; the near-duplicate
    check is `diagnose`'s and the report's only: grouping a large dataset costs seconds that rank
    and export need not pay)."""
    con = fusion.connect(db_url, ranking)
    try:
        return [w.text for w in judge(diagnose(con, dataset)) + audit_warnings(con, dataset)]
    finally:
        con.close()


def near_duplicate_warning(con: duckdb.DuckDBPyConnection, dataset: str, top: float = 0.2,
                           t: Thresholds = THRESHOLDS) -> str | None:
    """One line when samples with a better-ranked near-duplicate take more than
    `t.near_duplicate_top_share` of the dataset's top share; None otherwise, when the ranking
    already dedups, or when the dataset's signatures are not all computed."""
    from selectit.fusion.dedup import near_groups
    from selectit.fusion.formula_sql import top_share_sql

    ranking = fusion.params_of(con).ranking
    if ranking.dedup == "near":
        return None
    try:
        ds = fusion.dataset_id(con, dataset)
        near_groups(con, ds, dataset, ranking.jaccard)
    except fusion.FusionError:
        return None
    copies, kept = con.execute(f"""
        WITH r AS (SELECT sample_id, rank, count(*) OVER () AS n_rankable FROM ranking WHERE dataset_id = {int(ds)}),
        g AS (SELECT r.*, d.group_id, min(r.rank) OVER (PARTITION BY d.group_id) AS best FROM r
              LEFT JOIN dedup_groups d ON d.dataset_id = {int(ds)} AND d.sample_id = r.sample_id)
        SELECT count(*) FILTER (WHERE group_id IS NOT NULL AND rank > best), count(*) FROM g
        WHERE rank <= {top_share_sql(top)}""").fetchone()
    if not kept or copies / kept <= t.near_duplicate_top_share:
        return None
    return (f"near-duplicates fill {100 * copies / kept:.0f}% of the top {100 * top:g}% of {dataset} ({copies} of "
            f"{kept} samples have a better-ranked near-copy); keep one of each with --dedup near (docs/dedup.md)")


def warnings_for_params(db_url: str | None, dataset: str, params: fusion.Params) -> list[str]:
    """The warning lines for `dataset` under exactly `params` (a frozen selection's)."""
    con = fusion.connect_pinned(db_url, params)
    try:
        return [w.text for w in judge(diagnose(con, dataset)) + audit_warnings(con, dataset)]
    finally:
        con.close()


def selection_warnings(engine: Any, db_url: str | None, selection: str) -> list[str]:
    """The warning lines for a frozen selection: its dataset under its own models and prompts."""
    import sqlalchemy as sa

    from selectit.store.schema import Dataset, Selection

    from selectit.store.db import reading

    with reading(engine).connect() as conn:  # a read: it never waits for a writer's lock
        row = conn.execute(sa.select(Dataset.name, Selection.params).join(Dataset, Dataset.id == Selection.dataset_id)
                           .where(Selection.name == selection)).first()
    if row is None or not row[1].get("models"):
        return []
    return warnings_for_params(db_url, row[0], fusion.Params.from_json(row[1]))
