"""The report's sections, one per question: a plot drawn with matplotlib (PNG) and the tables of
the numbers behind it, made from `selectit.report.data.ReportData`.

Each `*_section(d, plt, out)` saves its PNG into the staging directory `out` and returns a
`Section`; the rater health and controls sections are tables only and read the fusion connection.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from selectit.errors import SelectitError
from selectit.report.data import (
    N_EXAMPLES,
    STATS_COLUMNS,
    ReportData,
    Table,
    excerpt,
    histogram_table,
    rounded,
    spearman_matrix,
    stats_row,
)
from selectit.report.page import Section


def _save(fig: Any, plt: Any, out: Path, name: str, tight: bool = True) -> str:
    if tight:
        fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100, bbox_inches="tight")  # legends outside the axes stay in
    plt.close(fig)
    return f"{name}.png"


def _wrap(label: str, width: int = 22) -> str:
    """A label broken into lines for a tick or a title (prompt labels are a few words long)."""
    return textwrap.fill(label, width)


def coverage_figure(plt: Any, coverage: list[tuple[Any, ...]]) -> Any:
    """Stacked bars per model (complete, missing, failed samples); the legend sits above the axes,
    so it never covers a bar."""
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(coverage) + 1.6))
    names = [r[0] for r in coverage]
    left = [0] * len(names)
    for idx, label, color in ((2, "complete", "#55a868"), (3, "missing", "#cccccc"), (4, "failed", "#c44e52")):
        widths = [r[idx] for r in coverage]
        ax.barh(names, widths, left=left, label=label, color=color)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel("samples")
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncol=3, loc="lower left", bbox_to_anchor=(0.0, 1.02), borderaxespad=0.0, frameon=False)
    return fig


def coverage_section(d: ReportData, plt: Any, out: Path) -> Section:
    sec = Section(
        "coverage", "Coverage",
        f"Per model, over the dataset's {d.n_samples} samples and the {len(d.prompts)} prompts of the set: "
        "complete (every prompt scored ok), missing (some cell never scored) and failed (some cell failed; "
        "`selectit score` retries it a bounded number of times). A sample is rankable when it is complete "
        f"for every chosen model: {len(d.ranking)} are.",
    )  # fmt: skip
    columns = ["model", "samples", "complete", "missing", "failed", "cells_ok", "cells_failed", "cells_missing"]
    rows = [list(r) for r in d.coverage]
    rows.append(["rankable (all models)", d.n_samples, len(d.ranking), None, None, None, None, None])
    sec.tables = [Table("coverage", "Coverage per model", columns, rows)]
    if not d.coverage:
        sec.note = "No active model is chosen: register one with `selectit model add`."
        return sec
    sec.png = _save(coverage_figure(plt, d.coverage), plt, out, sec.name)
    return sec


def _s_model_values(d: ReportData) -> tuple[list[float], list[float]]:
    """S_model of the rankable samples, and of the selected ones."""
    chosen = set(d.selected)
    return [s for _, _, s in d.ranking], [s for sid, _, s in d.ranking if sid in chosen]


def s_model_figure(plt: Any, d: ReportData) -> Any:
    """The S_model histogram of the rankable and the selected samples, and a dashed line at the cut-off."""
    values, selected_values = _s_model_values(d)
    _, edges, counts = histogram_table("s_model", "", {"rankable": values, "selected": selected_values})
    fig, ax = plt.subplots(figsize=(7, 3.4))
    ax.stairs(counts["rankable"], edges, fill=True, color="#4c72b0", alpha=0.55, label=f"rankable (n={len(values)})")
    ax.stairs(counts["selected"], edges, linewidth=1.8, color="#dd8452", label=f"selected (n={len(selected_values)})")
    if d.cutoff is not None:
        ax.axvline(d.cutoff, color="#c44e52", linestyle="--", linewidth=1.5, label=f"cut-off S_model = {d.cutoff:.4g}")
    ax.set_xlabel("S_model")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8, loc="lower left", bbox_to_anchor=(0.0, 1.02), ncol=3, borderaxespad=0.0, frameon=False)
    return fig


def s_model_section(d: ReportData, plt: Any, out: Path) -> Section:
    sec = Section(
        "s_model", "Model-level scores and the selection's cut-off",
        "Histogram of the fused S_model of the rankable samples (what `selectit rank` sorts by); the line "
        "is the cut-off of the top share: the S_model of the last selected sample.",
    )  # fmt: skip
    values, selected_values = _s_model_values(d)
    if not values:
        sec.note = "Nothing is rankable yet: score the missing cells with `selectit score`."
        return sec
    summary = Table("s_model_summary", "S_model of the rankable and the selected samples", STATS_COLUMNS,
                    [stats_row("rankable", values), stats_row("selected", selected_values)])  # fmt: skip
    hist, _, _ = histogram_table("s_model_histogram", "S_model histogram (counts per bin)",
                                 {"rankable": values, "selected": selected_values})  # fmt: skip
    fig = s_model_figure(plt, d)
    sec.png = _save(fig, plt, out, sec.name)
    sec.tables = [summary, hist]
    return sec


def examples_section(d: ReportData, plt: Any, out: Path) -> Section:
    sec = Section(
        "examples", f"Examples: the {N_EXAMPLES} best and the {N_EXAMPLES} worst ranked samples",
        "The samples at the head and at the tail of the ranking, with their S_model and each model's S_sent; "
        "texts are cut to a few lines (…). The two lists overlap when fewer than "
        f"{2 * N_EXAMPLES} samples are rankable.",
    )  # fmt: skip
    if not d.ranking:
        sec.note = "Nothing is rankable yet: no example to show."
        return sec
    models = [m for _, m, _ in d.models]
    # A conversation's weakest turn per model ("2 of 5: 1.234"): what its S_sent hides under mean or last.
    weak = [m for m in models if any(m in w for w in d.weakest.values())]
    columns = ["rank", "sample", "S_model", *(f"S_sent {m}" for m in models), *(f"weakest turn {m}" for m in weak),
               "instruction", "input", "output"]
    text = ("instruction", "input", "output")

    def weakest(sid: int, m: str) -> str:
        found = d.weakest.get(sid, {}).get(m)
        return "" if found is None else f"{found[0]} of {found[1]}: {found[2]:.4f}"

    def rows(part: list[tuple[int, int, float]]) -> list[list[Any]]:
        return [
            [rank, sid, rounded(s, 6), *(rounded(d.sent.get(m, {}).get(sid), 6) for m in models),
             *(weakest(sid, m) for m in weak), *(excerpt(t) for t in d.texts[sid])]
            for sid, rank, s in part
        ]  # fmt: skip

    sec.tables = [
        Table("examples_top", f"The {N_EXAMPLES} best ranked samples", columns, rows(d.ranking[:N_EXAMPLES]), text),
        Table("examples_bottom", f"The {N_EXAMPLES} worst ranked samples", columns,
              rows(d.ranking[-N_EXAMPLES:]), text),
    ]  # fmt: skip
    return sec


def sent_section(d: ReportData, plt: Any, out: Path) -> Section:
    sec = Section(
        "s_sent_by_model", "Sentence-level scores per model",
        "Histogram of S_sent (mean S_token over the prompt set, shrunk by α × its std) for the samples "
        "every prompt of the set has scored, per model.",
    )  # fmt: skip
    series = {m: list(d.sent.get(m, {}).values()) for _, m, _ in d.models}
    series = {k: v for k, v in series.items() if v}
    if not series:
        sec.note = "No sample has a complete sentence-level score yet: run `selectit score` first."
        return sec
    hist, edges, counts = histogram_table("s_sent_histogram", "S_sent histogram (counts per bin)", series)
    summary = Table("s_sent_summary", "S_sent per model", STATS_COLUMNS, [stats_row(k, v) for k, v in series.items()])
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 2.2 * len(series) + 0.6), sharex=True, squeeze=False)
    for ax, (name, values) in zip(axes[:, 0], series.items()):
        ax.stairs(counts[name], edges, fill=True, color="#4c72b0")
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("samples")
    axes[-1, 0].set_xlabel("S_sent")
    sec.png = _save(fig, plt, out, sec.name)
    sec.tables = [summary, hist]
    return sec


def turns_section(d: ReportData, plt: Any, out: Path) -> Section:
    sec = Section(
        "s_sent_by_turn", "Sentence-level scores by turn position",
        "S_sent of each rated assistant turn of the conversations with two or more, by its position "
        "(1: the first rated turn), per model: the mean, and the band from the 25th to the 75th "
        "percentile. Do later turns rate lower?",
    )  # fmt: skip
    if not d.turns:
        sec.note = "No conversation with two or more rated turns has a sentence-level score (or the turns are " \
                   "fused with --turns-agg last, which reads the last turns only)."
        return sec
    columns = ["model", "turn", "turns rated", "mean", "p25", "median", "p75"]
    sec.tables = [Table("s_sent_by_turn", "S_sent by turn position", columns,
                        [[m, p, n, *(rounded(v, 6) for v in rest)] for m, p, n, *rest in d.turns])]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for model in dict.fromkeys(m for m, *_ in d.turns):
        mine = [t for t in d.turns if t[0] == model]
        x = [t[1] for t in mine]
        (line,) = ax.plot(x, [t[3] for t in mine], marker="o", label=model)
        ax.fill_between(x, [t[4] for t in mine], [t[6] for t in mine], alpha=0.2, color=line.get_color())
    ax.set_xlabel("turn position (1: a conversation's first rated turn)")
    ax.set_ylabel("S_sent")
    ax.legend(fontsize=8)
    sec.png = _save(fig, plt, out, sec.name)
    return sec


def token_section(d: ReportData, plt: Any, out: Path) -> Section:
    sec = Section(
        "s_token_by_prompt", "Token-level scores per prompt",
        "Histogram of S_token (S_base × the spread of the normalised label probabilities) per prompt "
        "of the set (labelled with its first words), one line per model.",
    )  # fmt: skip
    positions = [p for _, p in d.prompts]
    model_names = [m for _, m, _ in d.models]
    series: dict[str, list[float]] = {}
    for pos in positions:
        for m in model_names:
            values = list(d.token.get((m, pos), {}).values())
            if values:
                series[f"{d.label(pos)} · {m}"] = values
    if not series:
        sec.note = "No token-level score yet: run `selectit score` first."
        return sec
    hist, edges, counts = histogram_table("s_token_histogram", "S_token histogram (counts per bin)", series)
    summary = Table("s_token_summary", "S_token per prompt and model", STATS_COLUMNS,
                    [stats_row(k, v) for k, v in series.items()])  # fmt: skip
    n = len(positions)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows + 0.4), sharex=True, squeeze=False)
    for i, pos in enumerate(positions):
        ax = axes[i // cols, i % cols]
        for m in model_names:
            key = f"{d.label(pos)} · {m}"
            if key in counts:
                ax.stairs(counts[key], edges, linewidth=1.5, label=m)
        ax.set_title(_wrap(d.label(pos), 36), fontsize=9)
        ax.set_xlabel("S_token")
    for j in range(n, rows * cols):
        axes[j // cols, j % cols].axis("off")
    axes[0, 0].legend(fontsize=8)
    sec.png = _save(fig, plt, out, sec.name)
    sec.tables = [summary, hist]
    return sec


def _matrix(labels: list[str], columns: dict[str, dict[int, float]]) -> tuple[list[list[float]], int]:
    """Spearman matrix over the samples every column has (complete cases), and their number."""
    common = None
    for values in columns.values():
        common = set(values) if common is None else common & set(values)
    ids = sorted(common or ())
    return spearman_matrix([[columns[c][i] for i in ids] for c in labels]), len(ids)


def _heatmap(ax: Any, matrix: list[list[float]], labels: list[str], title: str) -> Any:
    import numpy as np

    arr = np.array(matrix, dtype=float)
    im = ax.imshow(np.ma.masked_invalid(arr), vmin=-1, vmax=1, cmap="RdBu_r")
    ticks = [_wrap(label) for label in labels]
    ax.set_xticks(range(len(labels)), ticks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), ticks, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            text = "–" if math.isnan(arr[i, j]) else f"{arr[i, j]:.2f}".replace("-0.00", "0.00")
            dark = not math.isnan(arr[i, j]) and abs(arr[i, j]) > 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_title(title, fontsize=10)
    return im


def prompt_agreement_section(d: ReportData, plt: Any, out: Path) -> Section:
    sec = Section(
        "prompt_agreement", "Agreement between prompts",
        "Spearman rank correlation of S_token between the prompts of the set, per model, over the "
        "samples every prompt has scored for that model.",
    )  # fmt: skip
    per_model = []
    for _, m, _ in d.models:
        columns = {d.label(p): d.token[(m, p)] for _, p in d.prompts if d.token.get((m, p))}
        if len(columns) >= 2:
            labels = list(columns)
            matrix, n = _matrix(labels, columns)
            per_model.append((m, labels, matrix, n))
    if not per_model:
        sec.note = "Fewer than two prompts have scores for any model: nothing to compare yet."
        return sec
    labels = per_model[0][1]
    rows = [[m, n, a, *(rounded(v) for v in matrix[i])] for m, lab, matrix, n in per_model for i, a in enumerate(lab)]
    all_labels = [d.label(p) for _, p in d.prompts if any(d.label(p) in lab for _, lab, _, _ in per_model)]
    if any(lab != all_labels for _, lab, _, _ in per_model):  # models with different prompts scored
        rows = []
        for m, lab, matrix, n in per_model:
            for i, a in enumerate(lab):
                by = dict(zip(lab, matrix[i]))
                rows.append([m, n, a, *(rounded(by.get(b, math.nan)) for b in all_labels)])
        labels = all_labels
    columns = ["model", "n", "prompt", *labels]
    sec.tables = [Table("prompt_agreement", "Spearman ρ between prompts (S_token)", columns, rows)]
    cols = min(len(per_model), 2)
    rows = math.ceil(len(per_model) / cols)
    side = 2.6 + 0.75 * len(labels)  # inches per heatmap, so the numbers and the wrapped labels fit
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1.2, side * rows), squeeze=False, layout="constrained")
    for ax, (m, lab, matrix, n) in zip(axes.flat, per_model):
        im = _heatmap(ax, matrix, lab, f"{m} (n={n})")
    for ax in list(axes.flat)[len(per_model):]:
        ax.axis("off")
    fig.colorbar(im, ax=list(axes.flat), shrink=0.8, label="Spearman ρ")
    sec.png = _save(fig, plt, out, sec.name, tight=False)
    return sec


def model_agreement_section(d: ReportData, plt: Any, out: Path) -> Section:
    sec = Section(
        "model_agreement", "Agreement between models",
        "Spearman rank correlation of S_sent between the models, and with the fused S_model, over the "
        "samples every model has scored completely.",
    )  # fmt: skip
    columns = {m: d.sent[m] for _, m, _ in d.models if d.sent.get(m)}
    if not columns:
        sec.note = "No model has complete sentence-level scores yet."
        return sec
    if d.ranking:
        columns["S_model (fused)"] = {s: v for s, _, v in d.ranking}
    labels = list(columns)
    matrix, n = _matrix(labels, columns)
    sec.tables = [Table("model_agreement", "Spearman ρ between models (S_sent)", ["model", "n", *labels],
                        [[a, n, *(rounded(v) for v in matrix[i])] for i, a in enumerate(labels)])]  # fmt: skip
    size = 2.5 + 0.9 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = _heatmap(ax, matrix, labels, f"Spearman ρ of S_sent (n={n})")
    fig.colorbar(im, ax=ax, shrink=0.8)
    sec.png = _save(fig, plt, out, sec.name)
    return sec


def _groups(d: ReportData) -> dict[str, list[int]]:
    """full dataset ⊇ rankable (all chosen cells scored) ⊇ selected (top share)."""
    return {
        "full dataset": sorted(d.samples),
        "rankable": [s for s, _, _ in d.ranking],
        "selected": d.selected,
    }


def length_section(d: ReportData, plt: Any, out: Path) -> Section:
    import numpy as np

    sec = Section(
        "response_length", "Response length: selected vs full dataset",
        "Length of the response (characters of `output`) for the whole dataset, the rankable samples "
        "(every chosen cell scored) and the selected top share. The paper found its selection longer.",
    )  # fmt: skip
    groups = _groups(d)
    lengths = {g: [d.samples[s][1] for s in ids] for g, ids in groups.items()}
    rows = []
    for g, v in lengths.items():
        a = np.asarray(v, dtype=float)
        if len(a):
            p25, median, p75 = (rounded(float(np.percentile(a, q)), 2) for q in (25, 50, 75))
            rows.append([g, len(a), rounded(float(a.mean()), 2), median, p25, p75, int(a.max())])
        else:
            rows.append([g, 0, None, None, None, None, None])
    summary = Table("length_summary", "Response length (characters)",
                    ["group", "samples", "mean", "median", "p25", "p75", "max"], rows)  # fmt: skip
    present = {g: v for g, v in lengths.items() if v}
    hist, edges, counts = histogram_table(
        "length_histogram", "Response length histogram (counts per bin)", present, bins=30, lo=0.0
    )
    sec.tables = [summary, hist]
    if not present:
        sec.note = "The dataset is empty."
        return sec
    fig, ax = plt.subplots(figsize=(7, 3.6))
    colors = {"full dataset": "#999999", "rankable": "#4c72b0", "selected": "#dd8452"}
    for g, v in present.items():
        density = counts[g] / (len(v) * np.diff(edges))  # share of the group per character
        ax.stairs(density, edges, linewidth=1.8, label=f"{g} (n={len(v)})", color=colors[g])
    ax.set_xlabel("response length (characters)")
    ax.set_ylabel("share of samples per character")
    ax.legend(fontsize=8)
    sec.png = _save(fig, plt, out, sec.name)
    return sec


def calc_section(d: ReportData, plt: Any, out: Path) -> Section:
    sec = Section(
        "calculation_share", "Calculation instructions: selected vs full dataset",
        "Share of samples that ask for a calculation, by a heuristic: the instruction or its input "
        "holds numbers joined by an arithmetic operator (3 + 4, 12*7, 2^10, 7 - 3 with spaces), or the "
        "instruction holds a percentage (15%) or a word such as calculate, compute, solve, sum, total, "
        "how many, how much, percentage, average, multiply, divided by, equation. The paper found its "
        "selection richer in calculation.",
    )  # fmt: skip
    rows = []
    for g, ids in _groups(d).items():
        n_calc = sum(1 for s in ids if d.samples[s][0])
        rows.append([g, len(ids), n_calc, rounded(n_calc / len(ids)) if ids else None])
    columns = ["group", "samples", "calculation", "share"]
    sec.tables = [Table("calculation_share", "Calculation instructions", columns, rows)]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = [r[0] for r in rows]
    shares = [100 * (r[3] or 0.0) for r in rows]
    bars = ax.bar(labels, shares, color=["#999999", "#4c72b0", "#dd8452"])
    for bar, r in zip(bars, rows):
        ax.annotate(f"{r[2]}/{r[1]}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)  # fmt: skip
    ax.set_ylabel("calculation instructions (%)")
    ax.set_ylim(0, max(max(shares) * 1.15, 1.0))
    sec.png = _save(fig, plt, out, sec.name)
    return sec


def health_section(con: Any, dataset: str) -> Section:
    """Rater health (`selectit.fusion.health`): the figures per model and prompt, and the warnings."""
    from selectit.fusion import health

    try:
        rows = health.diagnose(con, dataset)
    except SelectitError as exc:  # e.g. no model chosen: the coverage section says what to do
        return Section("rater-health", "Rater health", "Nothing to judge yet.", note=str(exc))
    warnings = [w.text for w in health.judge(rows) + health.audit_warnings(con, dataset)]
    sec = Section(
        "rater-health", "Rater health",
        "Can these ratings be trusted? Label mass: the probability the rater puts on the label digits at all "
        "(median, 10th percentile); mean max P': how decided it is; collapse: the share of cells with the most "
        "common S_base; ρ: Spearman correlation between a model's prompts, between models and with the "
        "response length. Thresholds: README, \"Can I trust these ratings?\".",
        note=("Warnings: " + " • ".join(warnings)) if warnings else "No warnings: every figure is within its threshold.",
    )
    # the figures that decide a warning first, then the counts; the ids last (they are for SQL)
    columns = ["model", "level", "position", "mass_median", "collapse_share", "collapse_base", "mean_max_p",
               "rho_prompts", "rho_models", "rho_length", "truncated_share", "mass_p10", "cells", "samples", "scale",
               "rho_pairs", "prompt_set", "dataset", "model_id", "prompt_id"]
    sec.tables = [Table("rater_health", "Rater health per model and prompt (the decisive figures first)", columns,
                        [[rounded(r[c], 3) for c in columns] for r in rows])]
    return sec


def controls_section(con: Any, d: ReportData, top: float) -> Section:
    """The selected top share beside two controls of the same size from the same rankable samples
    (`selectit select --random` with seed 0, `--by length`): overlap, length, calculation share."""
    import statistics

    from selectit.fusion.selection import Control, control_rows, rank_dataset

    sec = Section(
        "controls", "SelectIT vs control selections",
        "For an honest ablation, fine-tune on the SelectIT selection and on a control of the same size "
        "from the same rankable samples: a random draw (`selectit select NAME --random SHARE --seed 0`) and "
        "the longest responses (`selectit select NAME --by length --top SHARE`). Overlap: samples shared "
        "with the SelectIT selection.",
    )  # fmt: skip
    if not d.ranking:
        sec.note = "Nothing is rankable yet: no selection to compare."
        return sec
    rank_dataset(con, d.dataset)
    groups = {
        "SelectIT (top share)": d.selected,
        "random control (seed 0)": [r.sample_id for r in control_rows(con, Control("random", top=top))],
        "longest responses": [r.sample_id for r in control_rows(con, Control("length", top=top))],
    }
    chosen = set(d.selected)
    rows = []
    for name, ids in groups.items():
        lengths = [d.samples[s][1] for s in ids]
        n_calc = sum(1 for s in ids if d.samples[s][0])
        rows.append([name, len(ids), len(chosen & set(ids)), rounded(statistics.fmean(lengths), 2),
                     rounded(float(statistics.median(lengths)), 2), rounded(n_calc / len(ids))])
    sec.tables = [Table("controls", "SelectIT selection and controls of the same size",
                        ["selection", "samples", "overlap with SelectIT", "mean length", "median length",
                         "calculation share"], rows)]
    return sec


def near_duplicates_section(con: Any, dataset: str, top: float) -> Section:
    """Near-duplicate groups (docs/dedup.md): how many, how much of the top share they fill, and
    the largest groups with their best-ranked member."""
    from selectit.fusion import health
    from selectit.fusion.dedup import near_groups
    from selectit.fusion.views import dataset_id, params_of, sql_str

    sec = Section(
        "near-duplicates", "Near-duplicates",
        "Samples whose whole texts are near-copies (MinHash of word 5-grams, estimated Jaccard >= "
        f"{params_of(con).ranking.jaccard:g}, exact copies after normalisation included) form groups; "
        "`--dedup near` keeps the best-ranked of each. A cluster of near-copies at the top of the ranking "
        "is redundant training data.",
    )  # fmt: skip
    try:
        ds = dataset_id(con, dataset)
        n_groups = near_groups(con, ds, dataset, params_of(con).ranking.jaccard)
    except SelectitError as exc:  # signatures not computed yet: the error says how
        sec.note = str(exc)
        return sec
    warning = health.near_duplicate_warning(con, dataset, top)
    sec.note = f"Warning: {warning}" if warning else "No warning: near-copies do not crowd the top share."
    grouped, extra = con.execute(
        f"SELECT count(*), count(*) - count(DISTINCT group_id) FROM dedup_groups WHERE dataset_id = {int(ds)}"
    ).fetchone()
    largest = con.execute(
        f"SELECT n.group_id, count(*) AS size, any_value(n.representative) AS rep, min(r.rank) AS best_rank, "
        f"any_value(s.instruction) FILTER (WHERE n.sample_id = n.representative) AS instruction "
        f"FROM near_duplicates n JOIN store.samples s ON s.id = n.sample_id "
        f"LEFT JOIN ranking r ON r.dataset_id = {int(ds)} AND r.sample_id = n.sample_id "
        f"WHERE n.dataset = {sql_str(dataset)} GROUP BY n.group_id ORDER BY size DESC, best_rank NULLS LAST, n.group_id "
        f"LIMIT {N_EXAMPLES}").fetchall()
    sec.tables = [
        Table("near_duplicates_summary", "Groups of near-duplicates", ["groups", "samples in groups",
              "samples --dedup near leaves out"], [[n_groups, grouped, extra]]),
        Table("near_duplicates", f"The {N_EXAMPLES} largest groups", ["group", "samples", "representative",
              "best rank", "representative's instruction"],
              [[g, size, rep, best, excerpt(text or "")] for g, size, rep, best, text in largest],
              text=("representative's instruction",)),
    ]
    return sec
