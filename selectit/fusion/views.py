"""The read model of SelectIT: a DuckDB connection with the curation database attached
read-only as `store` and the fusion views defined over it for one choice of models, prompt set,
α, formula and θ.

`connect()` defines, besides the views of `selectit.fusion.formula_sql` (`token_scores`,
`sentence_scores` — both per turn — `fused_turns`, `model_scores`, `ranking`, `selective_alpaca`),
`rater_health` (`selectit.fusion.health_sql`), `audit_scores` and `audit_results`
(`selectit.fusion.audit`) and `fusion_params` (the parameters as JSON). Only active model
and prompt versions of the chosen models and prompt set enter the views (the temporary tables
`chosen_models` and `chosen_prompts` say which, with each model's θ); older versions stay
queryable by id through `store.scores`. The parameters are fixed when the connection is made:
the views are cheap, so a new setting is a new connection.

The parts, one job each: `formula_sql` (the formulas as SQL and their validators), `params`
(the chosen models and prompts), `health_sql`, `store_attach` and `extensions` (DuckDB and the
store), `coverage`, and `console` (the read-only SQL console). Their public names are importable
from here as well. The selection/export half (criteria, frozen selections) is
`selectit.fusion.selection`.

    >>> con = connect("sqlite:///selectit.db", Ranking(alpha=0.5))  # doctest: +SKIP
    >>> con.execute("SELECT * FROM ranking LIMIT 5").fetchall()  # doctest: +SKIP
"""

from __future__ import annotations

import json

import duckdb

from selectit.contract import (  # noqa: F401 - the defaults are part of this module's interface
    DEFAULT_ALPHA,
    DEFAULT_FORMULA,
    DEFAULT_PROMPT_SET,
    DEFAULT_TOP,
    Formula,
    valid_name,
)
from selectit.fusion import dedup
from selectit.fusion.audit import audit_sql
from selectit.fusion.console import READ_ONLY_MESSAGE, check_console_sql, run_sql, seal  # noqa: F401
from selectit.fusion.coverage import (  # noqa: F401
    Coverage,
    ModelCoverage,
    coverage,
    scoring_coverage,
    store_coverage,
)
from selectit.fusion.errors import FusionError, ReadOnlyError  # noqa: F401
from selectit.fusion.formula_sql import (  # noqa: F401
    TIE_RULE,
    s_sent_sql,
    token_sql,
    top_share_sql,
    validate_alpha,
    validate_formula,
    validate_top,
    views_sql,
)
from selectit.fusion.health_sql import ALL_SAMPLES_SCOPE, DATASET_SCOPE, health_sql  # noqa: F401
from selectit.fusion.params import (  # noqa: F401
    ChosenModel,
    ChosenPrompt,
    Params,
    choose_models,
    choose_prompts,
    params_of,
    prompt_sets,
    require_scoring_setup,
)
from selectit.fusion.store_attach import attach, dataset_id, sql_str  # noqa: F401
from selectit.ranking import DEFAULT_RANKING, Ranking


def connect(db_url: str | None, ranking: Ranking = DEFAULT_RANKING, *, top: float = DEFAULT_TOP
            ) -> duckdb.DuckDBPyConnection:
    """DuckDB with the curation database attached read-only as `store` and the fusion views of
    `ranking` (its models, θ, prompt set, α, formula and turns aggregate); `top`: the share in
    `selective_alpaca`.

    A prompt set that does not exist gives empty views when it is the default (`rank` says so),
    and an error when the ranking names it. The resolved choices are on the connection (`params_of`).
    """
    top = validate_top(top)
    con = attach(db_url)
    try:
        chosen_models = choose_models(con, ranking)
        set_name = ranking.prompt_set or DEFAULT_PROMPT_SET
        chosen_prompts = choose_prompts(con, set_name)
        if ranking.prompt_set and not chosen_prompts:
            raise FusionError(
                f"no active prompt set named {ranking.prompt_set!r} (sets: {', '.join(prompt_sets(con)) or 'none'})"
            )
        _define_views(con, Params(ranking, set_name, chosen_models, chosen_prompts), top)
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
            f"INSERT INTO chosen_models VALUES ({int(m.model_id)}, {sql_str(m.name)}, {m.theta!r}, {m.share!r})"
        )
    con.execute("CREATE TEMP TABLE chosen_prompts (prompt_id BIGINT, set_name VARCHAR, position INTEGER, scale INTEGER)")
    for p in params.prompts:
        con.execute(
            f"INSERT INTO chosen_prompts VALUES ({int(p.prompt_id)}, {sql_str(p.set_name)}, {int(p.position)}, {int(p.scale)})"
        )
    max_scale = max((p.scale for p in params.prompts), default=2)
    con.execute(token_sql(max_scale, params.ranking))
    con.execute(views_sql(params.ranking, len(params.prompts), len(params.models), top))
    con.execute(f"CREATE OR REPLACE TEMP VIEW rater_health AS {health_sql(DATASET_SCOPE, params)}")
    con.execute(audit_sql(top))
    dedup.define(con)  # near_duplicates: filled per dataset when a ranking dedups (or a query asks)
    # The parameters travel with the connection (and are visible to ad-hoc SQL).
    con.execute(f"CREATE TEMP TABLE fusion_params AS SELECT {sql_str(json.dumps(params.as_json()))}::JSON AS params")


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
