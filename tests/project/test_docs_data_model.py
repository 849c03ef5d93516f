"""docs/data-model.md names every table and column of the store, and every view and table that
`selectit sql` sees with its columns: checked against the ORM and a live DuckDB connection, so the
page cannot fall behind a migration or a new view.
"""

from __future__ import annotations

import re

from conftest import ROOT
from test_views import seed

from selectit.ranking import Ranking
from selectit.fusion import views as fusion
from selectit.store.schema import Base

DOC = (ROOT / "docs" / "data-model.md").read_text(encoding="utf-8")


def _named(text: str) -> set[str]:
    """Every `name` in backticks, with `p1` … `p9` standing for p1..p9."""
    names = set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", text))
    if "`p1` … `p9`" in text:
        names |= {f"p{k}" for k in range(1, 10)}
    return names


def _table_section(table: str) -> str:
    """The section whose heading names `table` (one section may describe two tables)."""
    match = re.search(rf"^### [^\n]*`{table}`.*?(?=^### |^## )", DOC, re.S | re.M)
    assert match, f"docs/data-model.md has no section whose heading names `{table}`"
    return match.group(0)


def test_every_table_and_column_of_the_store_is_documented() -> None:
    for table in Base.metadata.sorted_tables:
        section = _table_section(table.name)
        named = _named(section) | set(re.findall(rf"`{table.name}\.(\w+)`", section))
        missing = {c.name for c in table.columns} - named
        assert not missing, f"docs/data-model.md, table {table.name}: columns not described: {sorted(missing)}"


def test_every_view_the_console_sees_is_documented_with_its_columns(engine, db_url: str) -> None:
    seed(engine)
    con = fusion.connect(db_url, Ranking(prompt_set="s"))
    try:
        objects = con.execute(
            "SELECT view_name, 'view' FROM duckdb_views() WHERE temporary AND NOT internal "
            "UNION ALL SELECT table_name, 'temp table' FROM duckdb_tables() WHERE temporary").fetchall()
        listing = DOC.split("## What `selectit sql` sees", 1)[1]
        rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", listing, re.M)}
        assert {name for name, _ in objects} <= set(rows) | {"dataset_ranking", "coverage_cells"}, (
            f"undocumented: {sorted({n for n, _ in objects} - set(rows))}")
        for name, kind in objects:
            if name not in rows:
                continue  # working tables of one command, not part of the console's interface
            columns = {r[0] for r in con.execute(f"DESCRIBE {name}").fetchall()}
            missing = columns - _named(rows[name])
            assert not missing, f"docs/data-model.md, {kind} {name}: columns not described: {sorted(missing)}"
    finally:
        con.close()
