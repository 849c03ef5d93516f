"""The report's audit section (`selectit audit`, docs/audit.md): S_model of the drawn records
beside that of each kind of known-bad twin, the AUROC table and the verdict. Only a dataset with an
audit gets the section."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectit.report.data import Table, histogram_table, rounded
from selectit.report.page import Section


@dataclass(frozen=True)
class AuditData:
    """What the section needs from the fusion connection: the figures and the fused scores per kind."""

    figures: Any  # selectit.fusion.audit.AuditFigures
    scores: dict[str, list[float]] = field(default_factory=dict)  # kind (clean first) → S_model values


def gather(con: Any, dataset: str) -> AuditData | None:
    """The audit of `dataset` on a fusion connection; None when it has none."""
    from selectit.fusion import audit
    from selectit.fusion.store_attach import sql_str

    if not audit.has_audit(con, dataset):
        return None
    rows = con.execute("SELECT kind, score FROM audit_scores WHERE level = 'fusion' AND dataset = "
                       f"{sql_str(dataset)} ORDER BY kind <> 'clean', kind, score").fetchall()
    scores: dict[str, list[float]] = {}
    for kind, score in rows:
        scores.setdefault(kind, []).append(float(score))
    return AuditData(audit.figures(con, dataset), scores)


def section(data: AuditData, plt: Any, out: Path) -> Section:
    """Step histograms of S_model, clean records vs each twin kind, and the `audit_results` rows."""
    sec = Section(
        "audit", "Audit: known-bad twins",
        "Records drawn from the dataset (clean) and known-bad twins of them — another record's response "
        "(mismatched), the response cut to 30% of its words (truncated), a refusal, the instruction echoed, "
        "a replaced assistant turn — scored like any sample. A working ranking puts the twins below the "
        "clean records: AUROC 1 separates them, 0.5 is chance; beside it, a ranking by response length alone. "
        "See docs/audit.md.",
        note=f"Verdict: {data.figures.verdict}.",
    )
    columns = ["level", "model", "position", "kind", "n_clean", "n_bad", "auroc", "auroc_length", "twins_in_top",
               "twins_in_top_length", "chance", "rho_length"]
    sec.tables = [Table("audit_results", "AUROC of clean records over twins, per rater and kind", columns,
                        [[rounded(r[c]) for c in columns] for r in data.figures.rows if r["level"] != "prompt"])]
    if not data.scores.get("clean") or len(data.scores) < 2:
        sec.note += " Nothing to plot yet: score the audit's cells (selectit audit)."
        return sec
    hist, edges, counts = histogram_table("audit_histogram", "S_model histogram per kind (counts per bin)",
                                          data.scores, bins=20)
    sec.tables.append(hist)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    palette = iter(["#c44e52", "#dd8452", "#8172b3", "#55a868", "#4c72b0", "#937860"])
    for kind, values in data.scores.items():
        share = [c / len(values) for c in counts[kind]]
        ax.stairs(share, edges, linewidth=2.6 if kind == "clean" else 1.4, label=f"{kind} (n={len(values)})",
                  color="#222222" if kind == "clean" else next(palette))
    ax.set_xlabel("S_model")
    ax.set_ylabel("share of the kind's samples")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{sec.name}.png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    sec.png = f"{sec.name}.png"
    return sec
