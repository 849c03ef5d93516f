"""Does the selection work? The audit's figures: how well the raters tell a dataset's records from
known-bad twins of them (`selectit audit`, docs/audit.md).

Two views over the fusion views and the tables `store.audits` / `store.audit_samples` (the twins
are made by `selectit.io.audit`):

- `audit_scores(dataset, audit, level, model, prompt_id, position, sample_id, kind, source_id,
  response_chars, score)`: one row per audit member and scorer — level ``prompt`` (S_token of one
  prompt of a model), ``model`` (S_sent of a model) or ``fusion`` (S_model); kind ``clean`` for
  the drawn records, else the corruption.
- `audit_results(dataset, audit, level, model, prompt_id, position, kind, n_clean, n_bad, auroc,
  auroc_length, twins_in_top, twins_in_top_length, chance, rho_length)`: per scorer, over the
  clean records against all twins (kind ``all``) and against each kind's twins:

  * ``auroc``: the probability that a clean record scores above a twin (ties count half), the
    Mann–Whitney U over n_clean × n_bad; ``auroc_length`` the same for a ranking by response length
    alone (the baseline beside every figure);
  * ``twins_in_top``: the share of twins that would enter the top `--top` share — scoring at least
    as high as the floor(top × n_clean)-th best clean record (at least the best) —, beside
    ``twins_in_top_length`` (by length) and ``chance`` (= top: where a random score lands);
  * ``rho_length``: Spearman ρ of the score with the response length (characters), over the clean
    records and the twins compared.

`verdict(auroc, auroc_length)` says in one line what the fused AUROC means, by `VERDICTS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import duckdb

from selectit.fusion.formula_sql import top_share_sql
from selectit.fusion.health_sql import _avg_rank, _rho
from selectit.fusion.store_attach import sql_str

#: (lowest AUROC, what it means), best first: the verdict's thresholds (docs/audit.md).
VERDICTS = (
    (0.75, "raters separate broken responses from good ones"),
    (0.60, "raters separate broken responses from good ones only weakly"),
    (0.40, "raters rank broken responses like good ones"),
    (0.0, "raters prefer broken responses to good ones"),
)
#: Below this fused AUROC the audit has failed: `diagnose` and the ranked commands warn.
PASS_AUROC = 0.60
#: A length-only ranking this close to (or above) the raters' AUROC is said in the verdict.
LENGTH_MARGIN = 0.02
COLUMNS = ("dataset", "audit", "level", "model", "prompt_id", "position", "kind", "n_clean", "n_bad", "auroc",
           "auroc_length", "twins_in_top", "twins_in_top_length", "chance", "rho_length")


def audit_sql(top: float) -> str:
    """The `audit_scores` and `audit_results` views (the fusion views must exist)."""
    key = "dataset, level, model, prompt_id"
    group = f"{key}, comparison"
    within = "c.dataset, c.level, c.model, c.prompt_id, c.comparison"
    return f"""
CREATE OR REPLACE TEMP VIEW audit_scores AS
WITH members AS (
    SELECT d.name AS dataset, a.name AS audit, x.sample_id, x.kind, x.source_id,
           length(s.output) AS response_chars
    FROM store.audit_samples x
    JOIN store.audits au ON au.dataset_id = x.dataset_id
    JOIN store.datasets a ON a.id = au.dataset_id
    JOIN store.datasets d ON d.id = au.subject_id
    JOIN store.samples s ON s.id = x.sample_id
), scored AS (
    -- per prompt: the last turn's S_token; per model: S_sent fused over the turns, as the ranking does
    SELECT 'prompt' AS level, model, prompt_id, position, sample_id, s_token AS score FROM token_scores WHERE turn = 0
    UNION ALL
    SELECT 'model', model, NULL, NULL, sample_id, s_sent FROM fused_turns
    UNION ALL
    SELECT 'fusion', NULL, NULL, NULL, sample_id, s_model FROM model_scores
)
SELECT m.dataset, m.audit, sc.level, sc.model, sc.prompt_id, sc.position, m.sample_id, m.kind, m.source_id,
       m.response_chars, sc.score
FROM members m JOIN scored sc ON sc.sample_id = m.sample_id;

CREATE OR REPLACE TEMP VIEW audit_results AS
WITH compared AS (  -- each comparison: the clean records and all twins, or one kind's twins
    SELECT *, 'all' AS comparison FROM audit_scores
    UNION ALL
    SELECT s.*, k.kind AS comparison
    FROM audit_scores s JOIN (SELECT DISTINCT dataset, kind FROM audit_scores WHERE kind <> 'clean') k
      ON k.dataset = s.dataset AND s.kind IN ('clean', k.kind)
), cut AS (  -- the top share's last clean record, by score and by length
    SELECT {key},
           max(CASE WHEN by_score = n_top THEN score END) AS score_cut,
           max(CASE WHEN by_length = n_top THEN response_chars END) AS length_cut
    FROM (SELECT *, {top_share_sql(top, "count(*) OVER (PARTITION BY " + key + ")")} AS n_top,
                 row_number() OVER (PARTITION BY {key} ORDER BY score DESC) AS by_score,
                 row_number() OVER (PARTITION BY {key} ORDER BY response_chars DESC) AS by_length
          FROM audit_scores WHERE kind = 'clean')
    GROUP BY {key}
), ranked AS (
    SELECT c.*, {_avg_rank("c.score", within)} AS r_score,
           {_avg_rank("c.response_chars", within)} AS r_length,
           CASE WHEN c.kind = 'clean' THEN 1 ELSE 0 END AS clean,
           CASE WHEN c.score >= t.score_cut THEN 1.0 ELSE 0.0 END AS in_top,
           CASE WHEN c.response_chars >= t.length_cut THEN 1.0 ELSE 0.0 END AS in_top_length
    FROM compared c JOIN cut t ON t.dataset = c.dataset AND t.level = c.level
        AND t.model IS NOT DISTINCT FROM c.model AND t.prompt_id IS NOT DISTINCT FROM c.prompt_id
), summed AS (
    SELECT dataset, any_value(audit) AS audit, level, model, prompt_id, any_value(position) AS position,
           comparison AS kind, sum(clean) AS n_clean, count(*) - sum(clean) AS n_bad,
           sum(r_score * clean) AS rs_clean, sum(r_length * clean) AS rl_clean,
           avg(in_top) FILTER (WHERE clean = 0) AS twins_in_top,
           avg(in_top_length) FILTER (WHERE clean = 0) AS twins_in_top_length,
           {_rho("r_score", "r_length")} AS rho_length
    FROM ranked GROUP BY {group}
)
SELECT dataset, audit, level, model, prompt_id, position, kind, n_clean, n_bad,
       CASE WHEN n_clean > 0 AND n_bad > 0 THEN (rs_clean - n_clean * (n_clean + 1) / 2.0) / (n_clean * n_bad) END
           AS auroc,
       CASE WHEN n_clean > 0 AND n_bad > 0 THEN (rl_clean - n_clean * (n_clean + 1) / 2.0) / (n_clean * n_bad) END
           AS auroc_length,
       twins_in_top, twins_in_top_length, CAST({float(top)!r} AS DOUBLE) AS chance, rho_length
FROM summed
ORDER BY dataset, CASE level WHEN 'fusion' THEN 0 WHEN 'model' THEN 1 ELSE 2 END, model, position,
         CASE WHEN kind = 'all' THEN 0 ELSE 1 END, kind
"""


def verdict(auroc: float | None, auroc_length: float | None = None) -> str:
    """The audit in one line, from the fused AUROC of clean records over twins (`VERDICTS`).

    >>> verdict(0.94)
    'raters separate broken responses from good ones (AUROC 0.94)'
    >>> verdict(0.52, 0.81)
    'raters rank broken responses like good ones (AUROC 0.52): this selection is close to random; ranking by response length alone does better (AUROC 0.81)'
    """
    if auroc is None:
        return "no audit figures yet: score the audit's cells (selectit audit scores them unless --no-score)"
    text = next(f"{what} (AUROC {auroc:.2f})" for low, what in VERDICTS if auroc >= low)
    if auroc < VERDICTS[2][0]:
        text += ": this selection is worse than random"
    elif auroc < PASS_AUROC:
        text += ": this selection is close to random"
    if auroc_length is not None and auroc_length >= auroc - LENGTH_MARGIN:
        better = "better" if auroc_length > auroc + LENGTH_MARGIN else "as well"
        text += f"; ranking by response length alone does {better} (AUROC {auroc_length:.2f})"
    return text


@dataclass(frozen=True)
class AuditFigures:
    """`audit_results` of one dataset, and the verdict on its fused row."""

    dataset: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    made: Any = None  # `Store.audit`: the twins it stored (`selectit.io.audit.AuditSet`)
    scored: list[Any] = field(default_factory=list)  # … and its `score` summaries, one per run

    @property
    def fused(self) -> dict[str, Any] | None:
        """The fusion row over all twins (None until the audit's cells are scored)."""
        return next((r for r in self.rows if r["level"] == "fusion" and r["kind"] == "all"), None)

    @property
    def passed(self) -> bool | None:
        """True/False by `PASS_AUROC`; None without figures."""
        row = self.fused
        return None if row is None or row["auroc"] is None else row["auroc"] >= PASS_AUROC

    @property
    def thresholds(self) -> dict[str, Any]:
        """The verdict's thresholds: the lowest fused AUROC of each verdict, and the pass mark."""
        return {"verdicts": [{"auroc_at_least": low, "verdict": what} for low, what in VERDICTS],
                "pass_auroc": PASS_AUROC, "length_margin": LENGTH_MARGIN}

    @property
    def verdict(self) -> str:
        row = self.fused
        return verdict(row and row["auroc"], row and row["auroc_length"])


def figures(con: duckdb.DuckDBPyConnection, dataset: str) -> AuditFigures:
    """The `audit_results` rows of `dataset` (none when it has no audit or nothing is scored)."""
    # Literals, not `?` parameters: DuckDB imports pandas (about 1 s) to bind parameters.
    rows = con.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_results WHERE dataset = {sql_str(dataset)}").fetchall()
    return AuditFigures(dataset, [dict(zip(COLUMNS, r)) for r in rows])


def failure(con: duckdb.DuckDBPyConnection, dataset: str) -> str | None:
    """The warning line when `dataset`'s audit has failed (fused AUROC below `PASS_AUROC`), else None."""
    if not has_audit(con, dataset):
        return None
    found = figures(con, dataset)
    if found.passed is not False:
        return None
    return f"the audit failed: {found.verdict} — see `selectit audit --dataset {dataset}` (docs/audit.md)"


def summary(con: duckdb.DuckDBPyConnection, dataset: str) -> dict[str, Any] | None:
    """`dataset`'s audit for a dataset card: the audit dataset, its draw, twins, fused AUROC (and by
    length) and verdict; None when it has no audit."""
    row = con.execute("SELECT a.name, au.seed, au.size, (SELECT count(*) FROM store.audit_samples x "
                      "WHERE x.dataset_id = au.dataset_id AND x.kind <> 'clean') FROM store.audits au "
                      "JOIN store.datasets a ON a.id = au.dataset_id JOIN store.datasets d ON d.id = au.subject_id "
                      f"WHERE d.name = {sql_str(dataset)}").fetchone()
    if row is None:
        return None
    found = figures(con, dataset)
    fused = found.fused or {}
    return {"audit_dataset": row[0], "seed": int(row[1]), "drawn": int(row[2]), "twins": int(row[3]),
            "auroc": fused.get("auroc"), "auroc_length": fused.get("auroc_length"), "passed": found.passed,
            "verdict": found.verdict}


def has_audit(con: duckdb.DuckDBPyConnection, dataset: str) -> bool:
    """Whether `dataset` has an audit dataset."""
    return bool(con.execute("SELECT count(*) FROM store.audits au JOIN store.datasets d ON d.id = au.subject_id "
                            f"WHERE d.name = {sql_str(dataset)}").fetchone()[0])
