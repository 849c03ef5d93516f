"""Control selections: a seeded random draw and the longest responses, from the same rankable
samples as a SelectIT selection, frozen and exported like one."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_views import seed
from test_health import _random_cells

from selectit.ranking import Ranking
from selectit.cli import main
from selectit.contract import EXPORT_FORMATS
from selectit.store import db
from selectit.store.db import session_scope
from selectit.store.schema import Sample, Selection, SelectionSample


def _seeded(url: str) -> int:
    """14 samples, 13 rankable (one has a cell of zero label mass); the unrankable sample's id."""
    cells = _random_cells(random.Random(11))
    return seed(db.open_store(url), cells)[next(iter(cells))]


def _run(url: str, *args) -> object:
    return CliRunner().invoke(main, ["--db", url, *map(str, args)], catch_exceptions=False)


def _selected(url: str, name: str) -> list[tuple[int, str, str]]:
    """(sample id, content hash, output) of a frozen selection, in its rank order."""
    with session_scope(db.open_store(url)) as s:
        return [tuple(r) for r in s.execute(
            sa.select(SelectionSample.sample_id, Sample.content_hash, Sample.output)
            .join(Selection, Selection.id == SelectionSample.selection_id)
            .join(Sample, Sample.id == SelectionSample.sample_id)
            .where(Selection.name == name).order_by(SelectionSample.rank))]


def test_random_control_is_the_same_twice_and_on_both_stores(sqlite_url: str, postgres_url: str) -> None:
    drawn = []
    for url in (sqlite_url, postgres_url):
        unrankable = _seeded(url)
        for name in ("r1", "r2"):
            result = _run(url, "select", name, "--dataset", "d", "--prompt-set", "s", "--random", "0.2", "--seed", "1")
            assert result.exit_code == 0, result.output
            assert "random 0.2 share, seed 1" in result.stdout
            drawn.append(_selected(url, name))
        other = _run(url, "select", "r3", "--dataset", "d", "--prompt-set", "s", "--random", "0.2", "--seed", "2")
        assert other.exit_code == 0
        assert _selected(url, "r3") != drawn[-1]  # another seed, another draw
    assert drawn[0] == drawn[1] == drawn[2] == drawn[3]
    # The draw by hand: sha256("1:<content hash>") ascending over the 13 rankable, floor(0.2 × 13) = 2.
    with session_scope(db.open_store(sqlite_url)) as s:
        hashes = dict(s.execute(sa.select(Sample.id, Sample.content_hash).where(Sample.id != unrankable)).all())
    by_hand = sorted(hashes, key=lambda sid: hashlib.sha256(f"1:{hashes[sid]}".encode()).hexdigest())
    assert len(hashes) == 13 and [r[0] for r in drawn[0]] == by_hand[:math.floor(0.2 * len(hashes))]


@pytest.mark.parametrize("size, n", [(["--top", "0.3"], 3), (["--top-n", "5"], 5), ([], 2)])
def test_length_control_is_a_sort_by_response_length(sqlite_url: str, size: list[str], n: int) -> None:
    unrankable = _seeded(sqlite_url)  # 13 rankable: 0.3 → 3, the default 0.2 → 2
    result = _run(sqlite_url, "select", "long", "--dataset", "d", "--prompt-set", "s", "--by", "length", *size)
    assert result.exit_code == 0, result.output
    with session_scope(db.open_store(sqlite_url)) as s:
        rows = s.execute(sa.text("SELECT s.id, s.output, ds.position FROM samples s "
                                 "JOIN dataset_samples ds ON ds.sample_id = s.id WHERE s.id != :u"), {"u": unrankable}).all()
    by_hand = [r[0] for r in sorted(rows, key=lambda r: (-len(r[1]), r[2]))][:n]
    assert [r[0] for r in _selected(sqlite_url, "long")] == by_hand


def test_controls_export_in_every_format_with_their_card(db_url: str, tmp_path) -> None:
    _seeded(db_url)
    assert _run(db_url, "select", "rnd", "--dataset", "d", "--prompt-set", "s", "--random", "0.5", "--seed", "1").exit_code == 0
    assert _run(db_url, "select", "long", "--dataset", "d", "--prompt-set", "s", "--by", "length").exit_code == 0
    for name, how in (("rnd", "control: random 0.5 share of the rankable samples, seed 1"),
                      ("long", "control: the longest responses, top 0.2 share of the rankable samples")):
        expected = len(_selected(db_url, name))
        # Seeded rows keep no original record: `original` is exported in test_rater_health (ingested data).
        for fmt in [f for f in EXPORT_FORMATS if f != "original"]:
            out = tmp_path / f"{name}-{fmt}"
            if fmt != "hf-dataset":  # hf-dataset writes a new directory of its own
                out.mkdir()  # a directory: the data and its card go in it, named after the selection
            result = _run(db_url, "export", "--selection", name, "--out", out, "--format", fmt, "--with-scores")
            assert result.exit_code == 0, (fmt, result.output)
            written = [line[len("wrote "):] for line in result.stdout.splitlines() if line.startswith("wrote ")]
            card = next(Path(w) for w in written if w.endswith("README.md")).read_text(encoding="utf-8")
            assert how in card and "drawn as a control" in card, fmt
            assert f"wrote {expected} samples" in result.stdout
            if fmt == "alpaca-json":
                data = re.search(r" to (.+) \(", written[0]).group(1)
                assert len(json.loads(Path(data).read_text(encoding="utf-8"))) == expected


def test_control_options_say_what_is_wrong(sqlite_url: str) -> None:
    _seeded(sqlite_url)
    for args, text in ((["--random", "0.2", "--top", "0.2"], "--random SHARE is the control's size"),
                       (["--random", "1.5"], "--random must be a share in (0, 1]"),
                       (["--by", "length", "--min-score", "0.1"], "give --top or --top-n, not --min-score")):
        result = _run(sqlite_url, "select", "bad", "--dataset", "d", "--prompt-set", "s", *args)
        assert result.exit_code == 1 and "Error:" in result.output and text in result.output, result.output
    with session_scope(db.open_store(sqlite_url)) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(Selection)) == 0  # nothing half-written


def test_report_compares_the_selection_with_both_controls(sqlite_url: str, tmp_path) -> None:
    from selectit.report.build import build_report

    _seeded(sqlite_url)
    for args in (["sel", "--top", "0.3"], ["rnd", "--random", "0.3"], ["long", "--by", "length", "--top", "0.3"]):
        assert _run(sqlite_url, "select", args[0], "--dataset", "d", "--prompt-set", "s", *args[1:]).exit_code == 0
    result = build_report(sqlite_url, "d", tmp_path / "report", Ranking(prompt_set="s"), top=0.3)
    rows = {r["selection"]: r for r in result.tables["controls"].records()}
    chosen = {r[0] for r in _selected(sqlite_url, "sel")}
    for label, name in (("SelectIT (top share)", "sel"), ("random control (seed 0)", "rnd"),
                        ("longest responses", "long")):
        frozen = _selected(sqlite_url, name)  # the frozen selection of the same control, by hand
        lengths = [len(output) for _, _, output in frozen]
        assert rows[label]["samples"] == len(frozen) == 3
        assert rows[label]["overlap with SelectIT"] == len(chosen & {r[0] for r in frozen})
        assert rows[label]["mean length"] == round(sum(lengths) / len(lengths), 2)
    page = (tmp_path / "report" / "index.html").read_text(encoding="utf-8")
    assert "SelectIT vs control selections" in page
