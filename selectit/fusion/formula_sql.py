"""The SelectIT formulas (docs/method.md §5) as DuckDB SQL, and the validators of their knobs.

Notation: p_k = stored probability of label k, K = prompts.scale. The views, over the temporary
tables `chosen_models(model_id, model, theta, share)` and `chosen_prompts(prompt_id, set_name,
position, scale)` and the attached store:

- `token_scores(sample_id, model_id, model, prompt_id, set_name, position, scale, turn, n_turns,
  s_base, s_token_paper, s_token_reference, s_token, mass, p_max, truncated)` — one row per usable
  cell (of every rated turn; of turn 0, the last, alone with ``turns_agg = last``);
- `sentence_scores(sample_id, model_id, model, turn, n_turns, n_prompts, s_sent)` — per turn;
- `fused_turns(sample_id, model_id, model, n_turns, s_sent)` — per (sample, model), the aggregate
  of the sample's turns' S_sent (``turns_agg``: their mean or min over every rated turn, or the
  last turn's);
- `model_scores(sample_id, n_models, s_model)` — over the models' `fused_turns`;
- `ranking(dataset, dataset_id, sample_id, position, s_model, rank, percentile)` (rank 1 = best);
- `selective_alpaca(dataset, rank, sample_id, instruction, input, output, s_model)` (top share).

**Tie rule.** Higher S_model first; equal S_model → the earlier position in the dataset (the
order of the ingested file). Positions are unique within a dataset, so the order is total.

**Rankable.** A sample is ranked only if every chosen (model, prompt) cell of every turn that
enters (all rated turns under ``mean``/``min``, the last under ``last``) is stored with status
`ok`; otherwise it is counted as not yet rankable (missing or failed cells), never defaulted.

**Top share.** `top_share_sql`: the first floor(share × rankable) samples, but at least one when
anything is rankable (share > 0 always).

    >>> print(s_sent_sql(0.2))
    avg(s_token) / (1 + 0.2 * stddev_pop(s_token))
"""

from __future__ import annotations

import math

from selectit.contract import RENDERING, CellStatus, Formula, TurnsAgg
from selectit.fusion.errors import FusionError
from selectit.ranking import (  # noqa: F401 - part of this module's interface
    Ranking,
    validate_alpha,
    validate_formula,
    validate_turns_agg,
)

TIE_RULE = "higher s_model first, then the earlier dataset position"


# --------------------------------------------------------------------------------------------
# The views (docs/method.md §5). Notation: p_k = stored probability of label k, K = prompts.scale.
# --------------------------------------------------------------------------------------------
def token_sql(max_scale: int, ranking: Ranking) -> str:
    """token_scores, with both formula variants; `s_token` is the ranking's formula.

    The K-wide expressions are written out for k = 1..max_scale (the largest K of the chosen
    prompts); terms with k > K are NULL and drop out of every sum, max and argmax. Under
    ``turns_agg = last`` only the cells of turn 0 (every sample's last turn) are read.
    """
    formula = Formula(ranking.formula)
    turns = "" if ranking.turns_agg != TurnsAgg.LAST else " AND s.turn = 0"
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
-- Token level, per (sample, model, prompt, turn) cell with status ok:
--   paper:          P'_k = p_k / Σ_j p_j
--   reference-code: P'_k = softmax_k(p_k / Σ_j p_j)
--   S_base  = argmax_k P'_k (1-based; ties → the smaller k)
--   S_token = S_base × (1/(K−1)) × Σ_{{k=1..K}} |P'_k − P'_{{S_base}}|
CREATE OR REPLACE TEMP VIEW token_scores AS
WITH cell AS (
    SELECT s.sample_id, s.model_id, m.model, s.prompt_id, p.set_name, p.position, p.scale,
           s.turn, x.n_turns, CAST(s.truncated AS INTEGER) AS truncated,
           {mask}
    FROM store.scores s
    JOIN chosen_models m ON m.model_id = s.model_id
    JOIN chosen_prompts p ON p.prompt_id = s.prompt_id
    JOIN store.samples x ON x.id = s.sample_id
    WHERE s.status = '{CellStatus.OK}' AND s.rendering = {RENDERING}{turns}
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
SELECT sample_id, model_id, model, prompt_id, set_name, position, scale, turn, n_turns,
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


#: A sample's S_sent from its turns' (per model): the SQL aggregate of `sentence_scores.s_sent`.
TURNS_AGG_SQL = {TurnsAgg.MEAN: "avg(s_sent)", TurnsAgg.MIN: "min(s_sent)", TurnsAgg.LAST: "any_value(s_sent)"}


def views_sql(ranking: Ranking, n_prompts: int, n_models: int, top: float) -> str:
    alpha, agg = ranking.alpha, TurnsAgg(ranking.turns_agg)
    # last: token_scores holds turn 0 alone, so one turn per (sample, model); else every rated turn
    turns_needed = "1" if agg == TurnsAgg.LAST else "any_value(n_turns)"
    return f"""
-- Sentence level, per (sample, model, turn) over the K' prompts of the set (population std, ddof 0):
--   S_sent = mean_i(S_token_i) / (1 + α × std_i(S_token_i)),   α = {alpha!r}
-- Only triples with all K' = {n_prompts} cells scored enter.
CREATE OR REPLACE TEMP VIEW sentence_scores AS
SELECT sample_id, model_id, any_value(model) AS model, turn, any_value(n_turns) AS n_turns,
       count(s_token) AS n_prompts, {s_sent_sql(alpha)} AS s_sent
FROM token_scores
GROUP BY sample_id, model_id, turn
HAVING count(s_token) = {n_prompts};

-- Turns, per (sample, model): S_sent of the sample = {agg.value} of its turns' S_sent ({TURNS_AGG_SQL[agg]}),
-- only when every turn that enters has one ({"turn 0, the last" if agg == TurnsAgg.LAST else "all n_turns"}).
CREATE OR REPLACE TEMP VIEW fused_turns AS
SELECT sample_id, model_id, any_value(model) AS model, count(*) AS n_turns, {TURNS_AGG_SQL[agg]} AS s_sent
FROM sentence_scores
GROUP BY sample_id, model_id
HAVING count(*) = {turns_needed};

-- Model level, per sample over the N chosen models:
--   S_model = Σ_m (θ_m / Σ_n θ_n) × S_sent_m,  θ = chosen_models.theta (share = θ/Σθ)
-- Only samples with a sentence score from all N = {n_models} models enter.

CREATE OR REPLACE TEMP VIEW model_scores AS
SELECT s.sample_id, count(*) AS n_models, sum(m.share * s.s_sent) AS s_model
FROM fused_turns s JOIN chosen_models m ON m.model_id = s.model_id
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
# One validator per knob
# --------------------------------------------------------------------------------------------
def validate_top(top: float, option: str = "--top") -> float:
    """The share kept by --top (or by `option`, the one the user gave: --random): a number in (0, 1]."""
    if not (isinstance(top, (int, float)) and math.isfinite(top) and 0 < top <= 1):
        kept = "the top 20%" if option == "--top" else "20%"
        raise FusionError(f"{option} must be a share in (0, 1], e.g. 0.2 for {kept}; got {top!r}")
    return float(top)


def top_share_sql(top: float, n_rankable: str = "n_rankable") -> str:
    """SQL bound on `rank` for the top share: floor(share × rankable), at least one.

    The 1e-9 absorbs binary rounding of the share (0.3 × 10 is 2.9999999999999996).
    """
    return f"greatest(1, floor({validate_top(top)!r} * {n_rankable} + 1e-9))"
