"""`selectit report`: a static HTML page with plots of a dataset's ratings and its selection.

Everything is read through the DuckDB fusion views (`selectit.fusion.views.connect`), so the page shows
exactly what `selectit rank` would compute for the same α, formula, models and prompt set. Every
plot is a PNG next to `index.html`, and the numbers behind it are a table on the page and a CSV
next to the PNG. The files are made in a private temporary directory, then written into the
report directory through `selectit.writer` (every target checked first, renamed into place): a
rerun replaces only the files the previous report wrote (its manifest lists them), never anything else.

matplotlib and numpy are imported inside the functions, so `import selectit` stays light.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectit.errors import SelectitError
from selectit.fusion.views import (
    DEFAULT_ALPHA,
    DEFAULT_FORMULA,
    DEFAULT_TOP,
    validate_top,
)
from selectit.io.writer import MANIFEST, Writer, read_manifest
from selectit.store import db

#: Marked the index.html of reports written before the manifest (`selectit.io.writer.MANIFEST`) listed their files.
MARKER = "<!-- selectit report -->"

# ----------------------------------------------------------------------------------------------
# The calculation heuristic (the paper found Selective Alpaca richer in calculation).
# A sample counts as a *calculation* when
#   - its instruction or its input holds arithmetic: a number, an operator and a number
#     ("3 + 4", "12*7", "2^10", "5 × 3"), or with spaces around it "7 - 3", "10 / 2", "5 x 3"
#     (unspaced "-", "/" and "x" are dates, ranges, paths and sizes: 2020-01-01, 4/4, 1920x1080);
#   - or its instruction has a percentage ("15%") or a calculation word (CALC_WORDS: calculate,
#     compute, solve, sum — not "sum up" —, total, how many, how much, percentage, average,
#     multiply, divided by, subtract, equation, arithmetic, square root, …; whole words, any
#     case). Words and percentages in the input are not counted: inputs are often passages
#     ("cloud computing", "grew 47%") about something else.
# It is a heuristic for a summary figure, not a classifier; the test pins it on known samples.
# ----------------------------------------------------------------------------------------------
CALC_WORDS = (
    "calculate", "calculated", "calculating", "calculation", "calculations", "compute", "computed",
    "solve", "solving", "sum", "total", "how many", "how much", "percentage", "percent",
    "average", "mean of", "multiply", "multiplied", "multiplication", "divided by",
    "subtract", "subtraction", "equation", "equations", "arithmetic", "square root",
    "factorial", "remainder", "product of", "quotient",
)  # fmt: skip
_NUM = r"\d+(?:[.,]\d+)?"
#: Arithmetic between numbers, searched in the instruction and the input.
ARITHMETIC_RE = re.compile(rf"{_NUM}\s*[+*×÷^]\s*{_NUM}|{_NUM}\s+[-−/x]\s+{_NUM}", re.IGNORECASE)
#: Percentages and calculation words, searched in the instruction only.
CALC_RE = re.compile(
    rf"{_NUM}\s*%|\b(?:"
    + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in CALC_WORDS).replace("sum", r"sum(?!\s+up\b)")
    + r")\b",
    re.IGNORECASE,
)


def is_calculation(instruction: str, input: str = "") -> bool:
    """True when the sample looks like a calculation (see ARITHMETIC_RE and CALC_RE).

    >>> is_calculation("Calculate the area of a circle with radius 4.")
    True
    >>> is_calculation("What is 12 * 7?")
    True
    >>> is_calculation("Write a poem about the sea.", "Born on 2020-01-01")
    False
    """
    return bool(ARITHMETIC_RE.search(instruction) or ARITHMETIC_RE.search(input or "") or CALC_RE.search(instruction))


# ----------------------------------------------------------------------------------------------
# What the page is made of
# ----------------------------------------------------------------------------------------------


@dataclass
class Table:
    """The numbers behind a plot: written as an HTML table (id `table-<name>`) and `<name>.csv`."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


@dataclass
class Section:
    """One plot (or a note when there is nothing to plot) with its tables."""

    name: str
    title: str
    text: str
    png: str | None = None  # file name relative to the report directory
    tables: list[Table] = field(default_factory=list)
    note: str | None = None


@dataclass(frozen=True)
class ReportResult:
    index: Path  # DIR/index.html
    pngs: tuple[str, ...]  # PNG file names written (relative to DIR)
    tables: dict[str, Table]  # by name
    n_samples: int
    n_rankable: int
    n_selected: int


class ReportError(SelectitError):
    """The report cannot be written as asked."""


# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------


def rankdata(values: Sequence[float]) -> Any:
    """Ranks 1..n, ties get the average of their ranks (as Spearman's rho needs)."""
    import numpy as np

    _, inverse, counts = np.unique(np.asarray(values, dtype=float), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # the last rank of each distinct value, in sorted order
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def spearman_matrix(columns: Sequence[Sequence[float]]) -> list[list[float]]:
    """Spearman's rank correlation between equally long columns (Pearson on average ranks).

    NaN where undefined (fewer than two values, or a constant column).
    """
    import numpy as np

    k = len(columns)
    if k == 0:
        return []
    if len(columns[0]) < 2:
        return [[math.nan] * k for _ in range(k)]
    ranks = np.array([rankdata(c) for c in columns])
    ranks -= ranks.mean(axis=1, keepdims=True)
    norms = np.sqrt((ranks**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ranks @ ranks.T) / np.outer(norms, norms)
    return [[float(v) if np.isfinite(v) else math.nan for v in row] for row in np.clip(rho, -1, 1)]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation of two series; NaN when undefined."""
    return spearman_matrix([a, b])[0][1]


def _round(x: Any, digits: int = 4) -> Any:
    if x is None:
        return None
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, digits)
    return x


def _stats_row(label: str, values: Sequence[float]) -> list[Any]:
    import numpy as np

    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return [label, 0, None, None, None, None, None]
    return [
        label, len(v), _round(float(v.mean())), _round(float(v.std())),
        _round(float(v.min())), _round(float(np.median(v))), _round(float(v.max())),
    ]  # fmt: skip


STATS_COLUMNS = ["series", "n", "mean", "std", "min", "median", "max"]


def _histogram_table(name: str, title: str, series: dict[str, Sequence[float]], bins: int = 20,
                     lo: float | None = None, hi: float | None = None) -> tuple[Table, Any, dict[str, Any]]:
    """Counts of every series over one set of common bin edges: (table, edges, counts).

    The plots draw these very counts (`Axes.stairs`), so the picture and the table agree.
    """
    import numpy as np

    everything = np.concatenate([np.asarray(v, dtype=float) for v in series.values()] or [np.zeros(0)])
    lo = float(everything.min()) if lo is None and len(everything) else (lo or 0.0)
    hi = float(everything.max()) if hi is None and len(everything) else (hi if hi is not None else 1.0)
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    counts = {k: np.histogram(np.asarray(v, dtype=float), bins=edges)[0] for k, v in series.items()}
    rows = [
        [_round(float(edges[i]), 4), _round(float(edges[i + 1]), 4), *(int(counts[k][i]) for k in series)]
        for i in range(bins)
    ]
    return Table(name, title, ["bin_from", "bin_to", *series], rows), edges, counts


# ----------------------------------------------------------------------------------------------
# Gathering the data (DuckDB)
# ----------------------------------------------------------------------------------------------


def _fetch(con: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return con.execute(sql, list(params)).fetchall()


@dataclass
class _Data:
    dataset: str
    dataset_id: int
    models: list[tuple[int, str, float]]  # id, name, θ
    set_name: str | None
    prompts: list[tuple[int, int]]  # id, position
    n_samples: int
    sent: dict[str, dict[int, float]]  # model → sample → S_sent
    token: dict[tuple[str, int], dict[int, float]]  # (model, position) → sample → S_token
    ranking: list[tuple[int, int, float]]  # sample, rank, s_model (rank order)
    samples: dict[int, tuple[bool, int]]  # sample → (is a calculation, output length in characters)
    coverage: list[tuple[Any, ...]]
    selected: list[int]  # sample ids of `selective_alpaca`, best first


def _gather(con: Any, dataset: str) -> _Data:
    from selectit.fusion import views as fusion

    dataset_id = fusion.dataset_id(con, dataset)

    # What the fusion chose (active versions; θ from --weights, models.weight or n_params).
    params = fusion.params_of(con)
    chosen = [(m.model_id, m.name, float(m.theta)) for m in params.models]
    set_name = params.prompt_set
    prompts = [(p.prompt_id, p.position) for p in params.prompts]

    cov = fusion.coverage(con, dataset)  # the rule of `selectit rank` and `selectit status`
    n_samples = cov.n_samples

    in_dataset = "JOIN store.dataset_samples d ON d.sample_id = v.sample_id AND d.dataset_id = ?"
    sent: dict[str, dict[int, float]] = {}
    for model, sample_id, s in _fetch(
        con,
        f"SELECT v.model, v.sample_id, v.s_sent FROM sentence_scores v {in_dataset} "
        "WHERE v.s_sent IS NOT NULL AND v.n_prompts = ? ORDER BY v.model, v.sample_id",
        [dataset_id, len(prompts)],
    ):
        sent.setdefault(model, {})[int(sample_id)] = float(s)
    token: dict[tuple[str, int], dict[int, float]] = {}
    cols = con.execute(
        f"SELECT v.model, v.position, v.sample_id, v.s_token FROM token_scores v {in_dataset} "
        "WHERE v.s_token IS NOT NULL ORDER BY v.model, v.position, v.sample_id",
        [dataset_id],
    ).fetchnumpy()  # columns, not 5 × 52k Python tuples
    model_col, position_col = cols["model"], cols["position"]
    for model in dict.fromkeys(model_col.tolist()):
        for position in dict.fromkeys(position_col[model_col == model].tolist()):
            mask = (model_col == model) & (position_col == position)
            token[(str(model), int(position))] = dict(
                zip(cols["sample_id"][mask].tolist(), cols["s_token"][mask].astype(float).tolist())
            )

    # The selected samples are the fusion's own `selective_alpaca` (the top share, rounded down,
    # at least one).
    selected = [
        int(r[0])
        for r in _fetch(con, "SELECT sample_id FROM selective_alpaca WHERE dataset = ? ORDER BY rank", [dataset])
    ]
    ranking = [
        (int(s), int(r), float(m))
        for s, r, m in _fetch(
            con, "SELECT sample_id, rank, s_model FROM ranking WHERE dataset_id = ? ORDER BY rank", [dataset_id]
        )
    ]
    samples = {
        int(sid): (is_calculation(ins or "", inp or ""), int(n))
        for sid, ins, inp, n in _fetch(
            con,
            "SELECT s.id, s.instruction, s.input, length(s.output) FROM store.samples s "
            "JOIN store.dataset_samples d ON d.sample_id = s.id AND d.dataset_id = ?",
            [dataset_id],
        )
    }
    coverage = [
        (m.model, m.n_samples, m.samples_complete, m.samples_missing, m.samples_failed, m.ok, m.failed, m.missing)
        for m in cov.models
    ]
    return _Data(
        dataset, dataset_id, chosen, set_name, prompts, n_samples, sent, token, ranking, samples,
        coverage, selected,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# The sections
# ----------------------------------------------------------------------------------------------


def _prompt_label(position: int) -> str:
    return f"prompt {position + 1}"


def _sent_section(d: _Data, plt: Any, out: Path) -> Section:
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
    hist, edges, counts = _histogram_table("s_sent_histogram", "S_sent histogram (counts per bin)", series)
    summary = Table("s_sent_summary", "S_sent per model", STATS_COLUMNS, [_stats_row(k, v) for k, v in series.items()])
    fig, axes = plt.subplots(len(series), 1, figsize=(7, 2.2 * len(series) + 0.6), sharex=True, squeeze=False)
    for ax, (name, values) in zip(axes[:, 0], series.items()):
        ax.stairs(counts[name], edges, fill=True, color="#4c72b0")
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("samples")
    axes[-1, 0].set_xlabel("S_sent")
    sec.png = _save(fig, plt, out, sec.name)
    sec.tables = [summary, hist]
    return sec


def _token_section(d: _Data, plt: Any, out: Path) -> Section:
    sec = Section(
        "s_token_by_prompt", "Token-level scores per prompt",
        "Histogram of S_token (S_base × the spread of the normalised label probabilities) per prompt "
        "of the set, one line per model.",
    )  # fmt: skip
    positions = [p for _, p in d.prompts]
    model_names = [m for _, m, _ in d.models]
    series: dict[str, list[float]] = {}
    for pos in positions:
        for m in model_names:
            values = list(d.token.get((m, pos), {}).values())
            if values:
                series[f"{_prompt_label(pos)} · {m}"] = values
    if not series:
        sec.note = "No token-level score yet: run `selectit score` first."
        return sec
    hist, edges, counts = _histogram_table("s_token_histogram", "S_token histogram (counts per bin)", series)
    summary = Table("s_token_summary", "S_token per prompt and model", STATS_COLUMNS,
                    [_stats_row(k, v) for k, v in series.items()])  # fmt: skip
    n = len(positions)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows + 0.4), sharex=True, squeeze=False)
    for i, pos in enumerate(positions):
        ax = axes[i // cols, i % cols]
        for m in model_names:
            key = f"{_prompt_label(pos)} · {m}"
            if key in counts:
                ax.stairs(counts[key], edges, linewidth=1.5, label=m)
        ax.set_title(_prompt_label(pos), fontsize=10)
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
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            text = "–" if math.isnan(arr[i, j]) else f"{arr[i, j]:.2f}".replace("-0.00", "0.00")
            dark = not math.isnan(arr[i, j]) and abs(arr[i, j]) > 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_title(title, fontsize=10)
    return im


def _prompt_agreement_section(d: _Data, plt: Any, out: Path) -> Section:
    sec = Section(
        "prompt_agreement", "Agreement between prompts",
        "Spearman rank correlation of S_token between the prompts of the set, per model, over the "
        "samples every prompt has scored for that model.",
    )  # fmt: skip
    per_model = []
    for _, m, _ in d.models:
        columns = {_prompt_label(p): d.token[(m, p)] for _, p in d.prompts if d.token.get((m, p))}
        if len(columns) >= 2:
            labels = list(columns)
            matrix, n = _matrix(labels, columns)
            per_model.append((m, labels, matrix, n))
    if not per_model:
        sec.note = "Fewer than two prompts have scores for any model: nothing to compare yet."
        return sec
    labels = per_model[0][1]
    rows = [[m, n, a, *(_round(v) for v in matrix[i])] for m, lab, matrix, n in per_model for i, a in enumerate(lab)]
    all_labels = sorted({x for _, lab, _, _ in per_model for x in lab}, key=lambda s: int(s.split()[-1]))
    if any(lab != all_labels for _, lab, _, _ in per_model):  # models with different prompts scored
        rows = []
        for m, lab, matrix, n in per_model:
            for i, a in enumerate(lab):
                by = dict(zip(lab, matrix[i]))
                rows.append([m, n, a, *(_round(by.get(b, math.nan)) for b in all_labels)])
        labels = all_labels
    columns = ["model", "n", "prompt", *labels]
    sec.tables = [Table("prompt_agreement", "Spearman ρ between prompts (S_token)", columns, rows)]
    cols = min(len(per_model), 2)
    rows = math.ceil(len(per_model) / cols)
    side = 1.6 + 0.75 * len(labels)  # inches per heatmap, so the numbers fit in their cells
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1.2, side * rows), squeeze=False)
    for ax, (m, lab, matrix, n) in zip(axes.flat, per_model):
        im = _heatmap(ax, matrix, lab, f"{m} (n={n})")
    for ax in list(axes.flat)[len(per_model):]:
        ax.axis("off")
    fig.colorbar(im, ax=list(axes.flat), shrink=0.8, label="Spearman ρ")
    sec.png = _save(fig, plt, out, sec.name, tight=False)
    return sec


def _model_agreement_section(d: _Data, plt: Any, out: Path) -> Section:
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
                        [[a, n, *(_round(v) for v in matrix[i])] for i, a in enumerate(labels)])]  # fmt: skip
    size = 2.5 + 0.9 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = _heatmap(ax, matrix, labels, f"Spearman ρ of S_sent (n={n})")
    fig.colorbar(im, ax=ax, shrink=0.8)
    sec.png = _save(fig, plt, out, sec.name)
    return sec


def _groups(d: _Data) -> dict[str, list[int]]:
    """full dataset ⊇ rankable (all chosen cells scored) ⊇ selected (top share)."""
    return {
        "full dataset": sorted(d.samples),
        "rankable": [s for s, _, _ in d.ranking],
        "selected": d.selected,
    }


def _length_section(d: _Data, plt: Any, out: Path) -> Section:
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
            p25, median, p75 = (_round(float(np.percentile(a, q)), 2) for q in (25, 50, 75))
            rows.append([g, len(a), _round(float(a.mean()), 2), median, p25, p75, int(a.max())])
        else:
            rows.append([g, 0, None, None, None, None, None])
    summary = Table("length_summary", "Response length (characters)",
                    ["group", "samples", "mean", "median", "p25", "p75", "max"], rows)  # fmt: skip
    present = {g: v for g, v in lengths.items() if v}
    hist, edges, counts = _histogram_table(
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


def _calc_section(d: _Data, plt: Any, out: Path) -> Section:
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
        rows.append([g, len(ids), n_calc, _round(n_calc / len(ids)) if ids else None])
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


def _coverage_section(d: _Data, plt: Any, out: Path) -> Section:
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
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(d.coverage) + 1.4))
    names = [r[0] for r in d.coverage]
    left = [0] * len(names)
    for idx, label, color in ((2, "complete", "#55a868"), (3, "missing", "#cccccc"), (4, "failed", "#c44e52")):
        widths = [r[idx] for r in d.coverage]
        ax.barh(names, widths, left=left, label=label, color=color)
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel("samples")
    ax.invert_yaxis()
    ax.legend(fontsize=8, loc="lower right")
    sec.png = _save(fig, plt, out, sec.name)
    return sec


def _health_section(con: Any, dataset: str) -> Section:
    """Rater health (`selectit.health`): the figures per model and prompt, and the warnings."""
    from selectit.fusion import health

    try:
        rows = health.diagnose(con, dataset)
    except SelectitError as exc:  # e.g. no model chosen: the coverage section says what to do
        return Section("rater-health", "Rater health", "Nothing to judge yet.", note=str(exc))
    warnings = [w.text for w in health.judge(rows)]
    sec = Section(
        "rater-health", "Rater health",
        "Can these ratings be trusted? Label mass: the probability the rater puts on the label digits at all "
        "(median, 10th percentile); mean max P': how decided it is; collapse: the share of cells with the most "
        "common S_base; ρ: Spearman correlation between a model's prompts, between models and with the "
        "response length. Thresholds: README, \"Can I trust these ratings?\".",
        note=("Warnings: " + " • ".join(warnings)) if warnings else "No warnings: every figure is within its threshold.",
    )
    sec.tables = [Table("rater_health", "Rater health per model and prompt", list(health.COLUMNS),
                        [[_round(r[c]) for c in health.COLUMNS] for r in rows])]
    return sec


def _controls_section(con: Any, d: _Data, top: float) -> Section:
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
        rows.append([name, len(ids), len(chosen & set(ids)), _round(statistics.fmean(lengths), 2),
                     _round(float(statistics.median(lengths)), 2), _round(n_calc / len(ids))])
    sec.tables = [Table("controls", "SelectIT selection and controls of the same size",
                        ["selection", "samples", "overlap with SelectIT", "mean length", "median length",
                         "calculation share"], rows)]
    return sec


def _save(fig: Any, plt: Any, out: Path, name: str, tight: bool = True) -> str:
    if tight:
        fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=100)
    plt.close(fig)
    return f"{name}.png"


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
caption { text-align: left; font-weight: bold; padding: 4px 0; }
img { max-width: 100%; }
section { border-top: 1px solid #ddd; margin-top: 1.5em; }
.note { color: #a33; }
"""


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:g}" if abs(v) < 1e6 else f"{v:.6g}"
    return html.escape(str(v))


def _table_html(t: Table, csv_name: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = "\n".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in r) + "</tr>" for r in t.rows)
    return (
        f'<table id="table-{t.name}"><caption>{html.escape(t.title)} '
        f'(<a href="{html.escape(csv_name)}">CSV</a>)</caption>\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"
    )


def _write_csv(t: Table, path: Path) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(t.columns)
        w.writerows([["" if v is None else v for v in r] for r in t.rows])


def _render(header: list[tuple[str, str]], sections: list[Section], title: str) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        MARKER,
        f"<h1>{html.escape(title)}</h1>",
        '<table id="table-header"><tbody>',
        *(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in header),
        "</tbody></table>",
        "<ul>",
        *(f'<li><a href="#{s.name}">{html.escape(s.title)}</a></li>' for s in sections),
        "</ul>",
    ]
    for s in sections:
        parts.append(f'<section id="{s.name}"><h2>{html.escape(s.title)}</h2><p>{html.escape(s.text)}</p>')
        if s.note:
            parts.append(f'<p class="note">{html.escape(s.note)}</p>')
        if s.png:
            parts.append(f'<img src="{html.escape(s.png)}" alt="{html.escape(s.title)}">')
        for i, t in enumerate(s.tables):
            table = _table_html(t, f"{t.name}.csv")
            # The first table is the summary; long ones (histogram bins) fold away.
            if i > 0 and len(t.rows) > 10:
                table = f"<details><summary>{html.escape(t.title)}</summary>\n{table}\n</details>"
            parts.append(table)
        parts.append("</section>")
    parts.append(f"<p><small>Written by selectit on {dt.datetime.now():%Y-%m-%d %H:%M}.</small></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------


def _theta(t: float) -> str:
    """134515008 → '134,515,008' (parameter counts), 0.35 → '0.35' (user weights)."""
    return f"{t:,.0f}" if t == int(t) else f"{t:g}"


def _prepare_out(out: Path) -> bool:
    """Check the report directory before anything is computed; True for a report written by an older
    selectit (no manifest: its index.html carries `MARKER`), whose files of the same names may be
    replaced.

    Refused: a file; `.` or an ancestor of the working directory; a non-empty directory that holds
    no selectit report.
    """
    real = Path(os.path.realpath(out))
    cwd = Path(os.getcwd())
    if real == cwd or real in cwd.parents:
        raise ReportError(f"--out {out} is the working directory or one of its parents; give the report a "
                          f"directory of its own (e.g. --out report)")
    if not out.exists():
        return False
    if not out.is_dir():
        raise ReportError(f"{out} is a file; give --out a directory (it is created if missing).")
    if (real / MANIFEST).exists():
        read_manifest(real)  # a clear error when it is not one
        return False
    index = real / "index.html"
    legacy = False
    if index.is_file() and not index.is_symlink():
        with open(index, encoding="utf-8", errors="replace") as fh:
            legacy = MARKER in fh.read(4000)
    if not legacy and any(real.iterdir()):
        raise ReportError(f"{out} exists and is not a selectit report; choose another --out or empty it first.")
    return legacy


def _write_files(staged: Path, out: Path, protect: Sequence[Path], legacy: bool) -> None:
    """Copy the report's files from `staged` into `out` through the guarded writer: every target is
    checked first, files the previous report wrote and this one does not are removed, nothing else."""
    w = Writer(entry="report", protect=protect, overwrite=legacy)
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        w.new_dir(out)
    names = sorted(p.name for p in staged.iterdir() if p.name != "index.html") + ["index.html"]
    for name in names:  # index.html last: the page appears when its images are there
        w.plan(out / name)
    if out.exists():
        for name, record in read_manifest(Path(os.path.realpath(out))).items():
            if record.get("entry") == "report" and name not in names:
                w.plan_stale(out / name)
    try:
        for name in names:
            w.stage(out / name, lambda tmp, n=name: shutil.copyfile(staged / n, tmp))
        w.commit()
    finally:
        w.abort()


def build_report(
    db_url: str | None,
    dataset: str,
    out: str | os.PathLike[str],
    *,
    models: list[str] | None = None,
    prompt_set: str | None = None,
    alpha: float = DEFAULT_ALPHA,
    formula: str = DEFAULT_FORMULA,
    top: float = DEFAULT_TOP,
    weights: dict[str, float] | None = None,
    progress: Callable[[str], None] | None = None,
) -> ReportResult:
    """Write `out/index.html`, one PNG and CSV per plot, for `dataset` scored in `db_url`.

    `models`, `prompt_set`, `alpha`, `formula`, `weights` and `top` go to `fusion.connect`; the
    selected samples are its `selective_alpaca` view (the top share of the rankable samples).
    """
    validate_top(top)  # before anything is written
    if not str(out).strip():
        raise ReportError("--out is empty; give the report's directory (e.g. --out report)")
    out = Path(out)
    legacy = _prepare_out(out)

    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    matplotlib.rcParams["text.parse_math"] = False  # labels are names as stored: `$x$`, `\foo` are text
    import matplotlib.pyplot as plt

    from selectit.fusion import views as fusion

    con = fusion.connect(
        db_url, alpha=alpha, formula=formula, models=models, prompt_set=prompt_set, weights=weights, top=top
    )
    try:
        d = _gather(con, dataset)
        health_section = _health_section(con, dataset)
        controls_section = _controls_section(con, d, top)
    finally:
        con.close()

    tmp = Path(tempfile.mkdtemp(prefix="selectit-report-"))  # private: the files are staged here first
    try:
        builders = (
            _coverage_section, _sent_section, _token_section, _prompt_agreement_section,
            _model_agreement_section, _length_section, _calc_section,
        )  # fmt: skip
        sections = [health_section]
        for build in builders:
            sec = build(d, plt, tmp)
            if progress:
                progress(sec.title)
            sections.append(sec)
        sections.append(controls_section)
        theta_sum = sum(t for _, _, t in d.models) or 1.0
        header = [
            ("dataset", f"{d.dataset} ({d.n_samples} samples)"),
            ("models (θ, θ/Σθ)",
             "; ".join(f"{m} (θ={_theta(t)}, {t / theta_sum:.3f})" for _, m, t in d.models) or "none"),  # fmt: skip
            ("prompt set", f"{d.set_name} ({len(d.prompts)} prompts)"),
            ("α", f"{alpha:g}"),
            ("formula", formula),
            ("top share", f"{top:g}"),
            ("rankable samples", str(len(d.ranking))),
            ("selected samples", str(len(d.selected))),
        ]
        tables: dict[str, Table] = {}
        for sec in sections:
            for t in sec.tables:
                _write_csv(t, tmp / f"{t.name}.csv")
                tables[t.name] = t
        (tmp / "index.html").write_text(_render(header, sections, f"selectit report: {d.dataset}"), encoding="utf-8")
        _write_files(tmp, out, [Path(p) for p in db.store_files(db_url)], legacy)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return ReportResult(
        index=out / "index.html",
        pngs=tuple(s.png for s in sections if s.png),
        tables=tables,
        n_samples=d.n_samples,
        n_rankable=len(d.ranking),
        n_selected=len(d.selected),
    )


__all__ = [
    "ARITHMETIC_RE", "CALC_RE", "CALC_WORDS", "ReportError", "ReportResult", "Table", "build_report",
    "is_calculation", "rankdata", "spearman", "spearman_matrix",
]  # fmt: skip
