"""`selectit report`: a static HTML page with plots of a dataset's ratings and its selection.

Everything is read through the DuckDB fusion views (`selectit.fusion.views.connect`), so the page shows
exactly what `selectit rank` would compute for the same α, formula, models, prompt set and top share.
This module checks the report directory, runs the steps and writes the files:

- `selectit.report.data`: what the page shows, gathered from the views, and the numbers;
- `selectit.report.sections`: one section per question, a PNG plot and its tables;
- `selectit.report.audit`: the audit's section (clean records vs known-bad twins), when the dataset has one;
- `selectit.report.page`: the HTML page and a CSV per table.

The files are made in a private temporary directory, then written into the report directory through
`selectit.io.writer` (every target checked first, renamed into place): a rerun replaces only the files
the previous report wrote (its manifest lists them), never anything else.

matplotlib and numpy are imported inside the functions, so `import selectit` stays light.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from selectit.contract import valid_path
from selectit.errors import SelectitError
from selectit.fusion.views import DEFAULT_TOP, validate_top
from selectit.report import audit as report_audit
from selectit.report import sections as sections_
from selectit.report.data import (
    ARITHMETIC_RE,
    CALC_RE,
    CALC_WORDS,
    Table,
    gather,
    is_calculation,
    prompt_labels,
    rankdata,
    spearman,
    spearman_matrix,
)
from selectit.report.page import MARKER, render, write_csv
from selectit.io.writer import MANIFEST, Writer, read_manifest
from selectit.ranking import DEFAULT_RANKING, Ranking
from selectit.store import db


@dataclass(frozen=True)
class ReportResult:
    index: Path  # DIR/index.html
    pngs: tuple[str, ...]  # PNG file names written (relative to DIR)
    tables: dict[str, Table]  # by name
    n_samples: int
    n_rankable: int
    n_selected: int
    cutoff: float | None = None  # S_model of the last selected sample (None when nothing is rankable)
    prompt_labels: tuple[str, ...] = ()  # the prompts' labels on the page, in the set's order


class ReportError(SelectitError):
    """The report cannot be written as asked."""


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
    ranking: Ranking = DEFAULT_RANKING,
    *,
    top: float = DEFAULT_TOP,
    progress: Callable[[str], None] | None = None,
) -> ReportResult:
    """Write `out/index.html`, one PNG and CSV per plot, for `dataset` scored in `db_url`.

    The fusion views are `ranking`'s; the selected samples are its `selective_alpaca` view (the
    `top` share of the rankable samples).
    """
    validate_top(top)  # before anything is written
    if not str(valid_path(out, "--out")).strip():
        raise ReportError("--out is empty; give the report's directory (e.g. --out report)")
    out = Path(out)
    legacy = _prepare_out(out)

    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    matplotlib.rcParams["text.parse_math"] = False  # labels are names as stored: `$x$`, `\foo` are text
    import matplotlib.pyplot as plt

    from selectit.fusion import views as fusion

    con = fusion.connect(db_url, ranking, top=top)
    try:
        d = gather(con, dataset)
        health_section = sections_.health_section(con, dataset)
        controls_section = sections_.controls_section(con, d, top)
        audited = report_audit.gather(con, dataset)  # None: the dataset has no audit
        near_section = sections_.near_duplicates_section(con, dataset, top)
    finally:
        con.close()

    tmp = Path(tempfile.mkdtemp(prefix="selectit-report-"))  # private: the files are staged here first
    try:
        builders = (
            sections_.coverage_section, sections_.s_model_section, sections_.examples_section,
            sections_.sent_section, sections_.turns_section, sections_.token_section, sections_.prompt_agreement_section,
            sections_.model_agreement_section, sections_.length_section, sections_.calc_section,
        )  # fmt: skip
        sections = [health_section]
        for build in builders:
            sec = build(d, plt, tmp)
            if progress:
                progress(sec.title)
            sections.append(sec)
        if audited is not None:
            sections.append(report_audit.section(audited, plt, tmp))
        sections += [near_section, controls_section]
        theta_sum = sum(t for _, _, t in d.models) or 1.0
        header = [
            ("dataset", f"{d.dataset} ({d.n_samples} samples)"),
            ("models (θ, θ/Σθ)",
             "; ".join(f"{m} (θ={_theta(t)}, {t / theta_sum:.3f})" for _, m, t in d.models) or "none"),  # fmt: skip
            ("prompt set", f"{d.set_name} ({len(d.prompts)} prompts)"),
            *((f"prompt {pos + 1}", d.label(pos)) for _, pos in d.prompts),
            ("α", f"{ranking.alpha:g}"),
            ("formula", ranking.formula),
            ("top share", f"{top:g}"),
            ("rankable samples", str(len(d.ranking))),
            ("selected samples", str(len(d.selected))),
            ("S_model cut-off", "–" if d.cutoff is None else f"{d.cutoff:.6f}"),
        ]
        tables: dict[str, Table] = {}
        for sec in sections:
            for t in sec.tables:
                write_csv(t, tmp / f"{t.name}.csv")
                tables[t.name] = t
        (tmp / "index.html").write_text(render(header, sections, f"selectit report: {d.dataset}"), encoding="utf-8")
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
        cutoff=d.cutoff,
        prompt_labels=tuple(d.label(pos) for _, pos in d.prompts),
    )


__all__ = [
    "ARITHMETIC_RE", "CALC_RE", "CALC_WORDS", "ReportError", "ReportResult", "Table", "build_report",
    "is_calculation", "prompt_labels", "rankdata", "spearman", "spearman_matrix",
]  # fmt: skip
