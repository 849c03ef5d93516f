"""The report's page: its sections rendered as one static `index.html` (every text escaped), and
each table as a CSV beside it.

    >>> from selectit.report.data import Table
    >>> sec = Section("demo", "A <demo>", "Text & more", tables=[Table("t", "T", ["a"], [[1.5]])])
    >>> "<h2>A &lt;demo&gt;</h2>" in render([("dataset", "d")], [sec], "title")
    True
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selectit.report.data import Table

#: Marked the index.html of reports written before the manifest (`selectit.io.writer.MANIFEST`) listed their files.
MARKER = "<!-- selectit report -->"


@dataclass
class Section:
    """One plot (or a note when there is nothing to plot) with its tables."""

    name: str
    title: str
    text: str
    png: str | None = None  # file name relative to the report directory
    tables: list[Table] = field(default_factory=list)
    note: str | None = None


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
td.text { text-align: left; white-space: pre-wrap; max-width: 32em; font-size: 0.95em; }
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


def table_html(t: Table, csv_name: str) -> str:
    """`t` as an HTML table with id `table-<name>`, its caption linking to its CSV."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    opening = ['<td class="text">' if c in t.text else "<td>" for c in t.columns]
    body = "\n".join(
        "<tr>" + "".join(f"{td}{_cell(v)}</td>" for td, v in zip(opening, r)) + "</tr>" for r in t.rows
    )
    return (
        f'<table id="table-{t.name}"><caption>{html.escape(t.title)} '
        f'(<a href="{html.escape(csv_name)}">CSV</a>)</caption>\n'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>"
    )


def write_csv(t: Table, path: Path) -> None:
    """`t` as a CSV file (a header row, then the rows; None as an empty field)."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(t.columns)
        w.writerows([["" if v is None else v for v in r] for r in t.rows])


def render(header: list[tuple[str, str]], sections: list[Section], title: str) -> str:
    """The whole page: a header table (id `table-header`), a table of contents, the sections."""
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
            table = table_html(t, f"{t.name}.csv")
            # The first table is the summary; long ones (histogram bins) fold away.
            if i > 0 and len(t.rows) > 10 and not t.text:
                table = f"<details><summary>{html.escape(t.title)}</summary>\n{table}\n</details>"
            parts.append(table)
        parts.append("</section>")
    parts.append(f"<p><small>Written by selectit on {dt.datetime.now():%Y-%m-%d %H:%M}.</small></p>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
