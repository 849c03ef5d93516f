"""Rater health as SQL: can the ratings be trusted? The figures over the fusion views (label
mass, decisiveness, collapse, agreement); their thresholds and warnings are `selectit.fusion.health`."""

from __future__ import annotations

from selectit.fusion.formula_sql import s_sent_sql
from selectit.fusion.params import Params

#: The samples a health figure is computed over: (dataset, sample_id, response_chars).
DATASET_SCOPE = """
SELECT d.name AS dataset, ds.sample_id, length(s.output) AS response_chars
FROM store.dataset_samples ds JOIN store.datasets d ON d.id = ds.dataset_id JOIN store.samples s ON s.id = ds.sample_id
"""
#: Every stored sample of any dataset once, as the dataset '*' (what `selectit status` reports);
#: not the known-bad twins of `selectit audit`, which would count as the raters' own failings.
ALL_SAMPLES_SCOPE = """
SELECT '*' AS dataset, s.id AS sample_id, length(s.output) AS response_chars
FROM store.samples s WHERE s.id IN (SELECT sample_id FROM store.dataset_samples)
  AND s.id NOT IN (SELECT sample_id FROM store.audit_samples WHERE kind <> 'clean')
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
    WHERE t.turn = 0  -- the last turns: one cell per (sample, model, prompt), as the figures assume
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
