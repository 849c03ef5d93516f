"""What `selectit report` shows, read from the DuckDB fusion views: the scores, the ranking, the
selection, the coverage, the prompts' labels and the example texts (`gather`), and the numbers
worked out from them (histograms, Spearman's ρ, summary rows, the calculation heuristic).

Nothing here draws or writes a file; `selectit.report.sections` turns this into the page's sections.
numpy is imported inside the functions, so `import selectit` stays light.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

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
# Labels and excerpts
# ----------------------------------------------------------------------------------------------

#: How many words of a prompt's own text make its label.
LABEL_WORDS = 6
#: A sample's text on the page: at most this many lines, and this many characters.
EXCERPT_LINES, EXCERPT_CHARS = 4, 300
_PLACEHOLDER = re.compile(r"\{\w+\}")


def prompt_labels(templates: Sequence[str], words: int = LABEL_WORDS) -> list[str]:
    """A short label per prompt of a set: the first `words` words of what sets it apart.

    Lines every template of the set shares (the sample's fields, "Rating:") and the placeholders
    are left out, so the label is the prompt's own question; a label two prompts would share gets
    the prompt's place in the set (#1, #2, …).

    >>> prompt_labels(["Q: {output}\\nRate the accuracy of the answer from 1 to 5.\\nRating:",
    ...                "Q: {output}\\nHow helpful is it?\\nRating:"])
    ['Rate the accuracy of the answer…', 'How helpful is it?']
    """
    lines = [[line.strip() for line in t.splitlines()] for t in templates]
    shared = set.intersection(*(set(ls) for ls in lines)) if len(lines) > 1 else set()
    labels = []
    for template, ls in zip(templates, lines):
        own = _PLACEHOLDER.sub(" ", " ".join(line for line in ls if line not in shared)).split()
        own = own or _PLACEHOLDER.sub(" ", template).split()  # identical templates: their common text
        labels.append(" ".join(own[:words]) + ("…" if len(own) > words else ""))
    return [f"{label} (#{i + 1})" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def excerpt(text: str, lines: int = EXCERPT_LINES, chars: int = EXCERPT_CHARS) -> str:
    """`text` cut to its first `lines` lines and `chars` characters, "…" where something was cut.

    >>> excerpt("one\\ntwo\\nthree", lines=2)
    'one\\ntwo…'
    >>> excerpt("short\\n\\n")
    'short'
    """
    all_lines = text.rstrip().splitlines()
    kept, cut = "\n".join(all_lines[:lines]), len(all_lines) > lines
    if len(kept) > chars:
        kept, cut = kept[:chars].rstrip(), True
    return kept + ("…" if cut else "")


# ----------------------------------------------------------------------------------------------
# Numbers
# ----------------------------------------------------------------------------------------------


@dataclass
class Table:
    """The numbers behind a plot: written as an HTML table (id `table-<name>`) and `<name>.csv`.

    `text` names the columns that hold texts (shown as written, line breaks kept)."""

    name: str
    title: str
    columns: list[str]
    rows: list[list[Any]]
    text: tuple[str, ...] = ()

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


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


def rounded(x: Any, digits: int = 4) -> Any:
    """A float rounded for the page (NaN → None); anything else as is."""
    if x is None:
        return None
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, digits)
    return x


STATS_COLUMNS = ["series", "n", "mean", "std", "min", "median", "max"]


def stats_row(label: str, values: Sequence[float]) -> list[Any]:
    """`label` and the STATS_COLUMNS of `values`."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return [label, 0, None, None, None, None, None]
    return [
        label, len(v), rounded(float(v.mean())), rounded(float(v.std())),
        rounded(float(v.min())), rounded(float(np.median(v))), rounded(float(v.max())),
    ]  # fmt: skip


def histogram_table(name: str, title: str, series: dict[str, Sequence[float]], bins: int = 20,
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
        [rounded(float(edges[i]), 4), rounded(float(edges[i + 1]), 4), *(int(counts[k][i]) for k in series)]
        for i in range(bins)
    ]
    return Table(name, title, ["bin_from", "bin_to", *series], rows), edges, counts


# ----------------------------------------------------------------------------------------------
# Gathering the data (DuckDB)
# ----------------------------------------------------------------------------------------------

#: How many of the best and of the worst ranked samples the page shows.
N_EXAMPLES = 10


def _fetch(con: Any, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    return con.execute(sql, list(params)).fetchall()


@dataclass
class ReportData:
    """Everything the sections draw, for one dataset and one choice of models, prompts and top share."""

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
    labels: dict[int, str] = field(default_factory=dict)  # prompt position → label (`prompt_labels`)
    texts: dict[int, tuple[str, str, str]] = field(default_factory=dict)  # example sample → its texts
    #: S_sent by turn position (1: a conversation's first rated turn) over the conversations of 2+
    #: rated turns: (model, position, turns rated, mean, 25th percentile, median, 75th percentile)
    turns: list[tuple[str, int, int, float, float, float, float]] = field(default_factory=list)
    #: example conversation → model → its weakest turn: (position, rated turns, S_sent)
    weakest: dict[int, dict[str, tuple[int, int, float]]] = field(default_factory=dict)

    def label(self, position: int) -> str:
        return self.labels.get(position, f"prompt {position + 1}")

    @property
    def cutoff(self) -> float | None:
        """The S_model of the last selected sample: the score threshold of the top share."""
        if not self.selected:
            return None
        return dict((s, m) for s, _, m in self.ranking)[self.selected[-1]]


def gather(con: Any, dataset: str) -> ReportData:
    """Read what the report shows from a `fusion.connect` connection."""
    from selectit.fusion import views as fusion

    dataset_id = fusion.dataset_id(con, dataset)

    # What the fusion chose (active versions; θ from --weights, models.weight or n_params).
    params = fusion.params_of(con)
    chosen = [(m.model_id, m.name, float(m.theta)) for m in params.models]
    set_name = params.prompt_set
    prompts = [(p.prompt_id, p.position) for p in params.prompts]
    templates = dict(_fetch(con, "SELECT id, template FROM store.prompts WHERE id IN (SELECT UNNEST(?))",
                            [[p for p, _ in prompts]])) if prompts else {}  # fmt: skip
    labels = dict(zip((pos for _, pos in prompts), prompt_labels([templates[p] for p, _ in prompts])))

    cov = fusion.coverage(con, dataset)  # the rule of `selectit rank` and `selectit status`
    n_samples = cov.n_samples

    in_dataset = "JOIN store.dataset_samples d ON d.sample_id = v.sample_id AND d.dataset_id = ?"
    sent: dict[str, dict[int, float]] = {}
    for model, sample_id, s in _fetch(
        con,
        f"SELECT v.model, v.sample_id, v.s_sent FROM fused_turns v {in_dataset} "
        "WHERE v.s_sent IS NOT NULL ORDER BY v.model, v.sample_id",
        [dataset_id],
    ):
        sent.setdefault(model, {})[int(sample_id)] = float(s)
    token: dict[tuple[str, int], dict[int, float]] = {}
    cols = con.execute(
        f"SELECT v.model, v.position, v.sample_id, v.s_token FROM token_scores v {in_dataset} "
        "WHERE v.s_token IS NOT NULL AND v.turn = 0 ORDER BY v.model, v.position, v.sample_id",
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
    examples = {s for s, _, _ in ranking[:N_EXAMPLES] + ranking[-N_EXAMPLES:]}
    texts = {
        int(sid): (ins or "", inp or "", out or "")
        for sid, ins, inp, out in _fetch(
            con, "SELECT id, instruction, input, output FROM store.samples WHERE id IN (SELECT UNNEST(?))",
            [sorted(examples)],
        )
    } if examples else {}  # fmt: skip
    coverage = [
        (m.model, m.n_samples, m.samples_complete, m.samples_missing, m.samples_failed, m.ok, m.failed, m.missing)
        for m in cov.models
    ]
    # Conversations: S_sent per turn position, summed up in SQL (not one Python tuple per turn).
    per_turn = f"FROM sentence_scores v {in_dataset} WHERE v.s_sent IS NOT NULL AND v.n_turns > 1"
    turns = [(str(m), int(p), int(n), float(a), float(q1), float(q2), float(q3)) for m, p, n, a, q1, q2, q3 in _fetch(
        con, f"SELECT v.model, v.n_turns - v.turn AS turn_position, count(*), avg(v.s_sent), "
             f"quantile_cont(v.s_sent, 0.25), median(v.s_sent), quantile_cont(v.s_sent, 0.75) {per_turn} "
             f"GROUP BY v.model, turn_position ORDER BY v.model, turn_position", [dataset_id])]  # fmt: skip
    weakest: dict[int, dict[str, tuple[int, int, float]]] = {}
    if turns and examples:  # ties → the earlier turn
        for sid, model, position, n_turns, s in _fetch(
            con, f"SELECT v.sample_id, v.model, arg_min(v.n_turns - v.turn, (v.s_sent, v.n_turns - v.turn)), "
                 f"any_value(v.n_turns), min(v.s_sent) {per_turn} AND v.sample_id IN (SELECT UNNEST(?)) "
                 f"GROUP BY v.sample_id, v.model", [dataset_id, sorted(examples)]):  # fmt: skip
            weakest.setdefault(int(sid), {})[str(model)] = (int(position), int(n_turns), float(s))
    return ReportData(
        dataset, dataset_id, chosen, set_name, prompts, n_samples, sent, token, ranking, samples,
        coverage, selected, labels, texts, turns, weakest,
    )  # fmt: skip
