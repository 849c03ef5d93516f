"""The cost before scoring: `plan --dry-run` and `score --estimate` write nothing, count the
tokens the scorer then sees, and give a time once a run's throughput is recorded."""

from __future__ import annotations

import sqlalchemy as sa
from conftest import DEMO_DATA

from selectit.api import Store
from selectit.store.db import session_scope
from selectit.store.schema import Prompt, Sample, Score, Throughput


def _every_row(engine: sa.Engine) -> dict[str, list[tuple]]:
    """Every table's rows, sorted: a write anywhere changes this."""
    out = {}
    with engine.connect() as conn:
        for table in sa.inspect(conn).get_table_names():
            rows = conn.execute(sa.text(f'SELECT * FROM "{table}"')).all()
            out[table] = sorted((tuple(map(repr, r)) for r in rows))
    return out


def test_estimates_write_nothing_and_count_the_tokens_the_scorer_sees(cli, db_url, tiny_model_dir) -> None:
    assert cli("ingest", DEMO_DATA, "--dataset", "d", "--limit", "8").exit_code == 0
    assert cli("model", "add", "tiny", "--source", str(tiny_model_dir), "--dtype", "float32").exit_code == 0
    store = Store(db_url)
    before = _every_row(store.engine)
    dry = cli("plan", "--dry-run")
    estimate = cli("score", "--dataset", "d", "--estimate")
    assert _every_row(store.engine) == before
    for result in (dry, estimate):
        assert result.exit_code == 0, result.output
        assert "tiny: 40 cells missing over 8 samples" in result.stdout and "(tokenizer)" in result.stdout
        assert "8 forwards; no time: no torch run of tiny is recorded yet" in result.stdout
        assert "Nothing was scored or written" in result.stdout
    [before_scoring] = store.estimate(dataset="d")
    [by_chars] = store.estimate(dataset="d", tokenizer=False)
    with session_scope(store.engine) as s:  # the planner's rule by hand: (sample chars + template chars) // 4
        chars = [n for (n,) in s.execute(sa.select(Sample.n_chars))]
        templates = [len(t) for (t,) in s.execute(sa.select(Prompt.template).where(Prompt.set_name == "default"))]
    assert by_chars.tokens_from.startswith("characters") and by_chars.tokens == sum(
        (n + t) // 4 for n in chars for t in templates)

    assert cli("score", "--dataset", "d", "--quiet").exit_code == 0
    with session_scope(store.engine) as s:  # what the scorer tokenized, cell by cell
        seen, truncated = s.execute(sa.select(sa.func.sum(Score.n_tokens),
                                              sa.func.sum(sa.cast(Score.truncated, sa.Integer)))).one()
        runs = s.execute(sa.select(Throughput.engine, Throughput.cells, Throughput.seconds)).all()
    assert truncated == 0 and before_scoring.tokens == seen  # the 1% the estimate may be off: none here
    assert {r.engine for r in runs} == {"torch"} and sum(r.cells for r in runs) == 40

    assert cli("ingest", DEMO_DATA, "--dataset", "d12", "--limit", "12").exit_code == 0
    [after] = store.estimate(dataset="d12")
    rate = sum(r.cells for r in runs) / sum(r.seconds for r in runs)
    assert after.cells == 20 and after.samples == 4
    assert after.cells_per_second == rate and after.seconds == 20 / rate
    line = cli("score", "--dataset", "d12", "--estimate").stdout
    assert "tiny: 20 cells missing over 4 samples" in line and f"at {rate:.3g} cells/s" in line
    assert "no time" not in line
    from selectit.jobs.estimate import duration

    assert duration(20 / rate) in cli("status").stdout  # the time left per model, at the same rate


def test_estimate_errors_say_what_to_do(cli) -> None:
    result = cli("plan", "--dry-run", "--dataset", "nope")
    assert result.exit_code == 1 and "Error: no dataset named 'nope'" in result.output
