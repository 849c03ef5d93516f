"""Names of datasets, prompt sets, selections and models: one non-empty line, stored in NFC.

Quotes, SQL and non-ASCII characters in a name round-trip through every command; invisible format
characters and spaces other than ' ', with which two names would print alike, are refused.
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
import sqlalchemy as sa
from guards import assert_one_error, invoke, seeded, snapshot  # noqa: F401 - seeded is a fixture

from selectit.store import db

# -------------------------------------------------------------------------------------------- names
BAD_NAMES = ["", "   ", "two\nlines", "a\rb", "tab\there", "nul\x00x", "esc\x1b[31m"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_are_non_empty_single_line(seeded: str, tmp_path: Path, name: str) -> None:
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    prompts = tmp_path / "p.txt"
    prompts.write_text("Rate it.\n")
    before = snapshot(seeded)
    for args in (["ingest", data, "--dataset", name],
                 ["prompts", "import", prompts, "--set", name, "--layout", "reference"],
                 ["select", name, "--dataset", "d", "--prompt-set", "s"],
                 ["model", "add", name, "--source", tmp_path / "nowhere.gguf"]):
        assert_one_error(invoke("--db", seeded, *args), "name")
    assert snapshot(seeded) == before


# (name, the character refused, its position): each prints like "ab" or "a b" and is not that name.
LOOK_ALIKES = [("a\u200bb", "U+200B", 2), ("a\u00a0b", "U+00A0", 2), ("\ufeffab", "U+FEFF", 1),
               ("ab\u00ad", "U+00AD", 3), ("a\u2060b", "U+2060", 2), ("a\u200db", "U+200D", 2),
               ("a\u2003b", "U+2003", 2), ("a\u202fb", "U+202F", 2), ("a\u3000b", "U+3000", 2),
               ("a\u1680b", "U+1680", 2), ("a b\u205f", "U+205F", 4)]


@pytest.mark.parametrize("name, code, position", LOOK_ALIKES, ids=[c for _, c, _ in LOOK_ALIKES])
def test_names_that_print_like_another_are_refused(seeded: str, tmp_path: Path, name: str, code: str,
                                                   position: int) -> None:
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    prompts = tmp_path / "p.txt"
    prompts.write_text("Rate it.\n")
    before = snapshot(seeded)
    for what, args in (("dataset", ["ingest", data, "--dataset", name]),
                       ("prompt set", ["prompts", "import", prompts, "--set", name, "--layout", "reference"]),
                       ("selection", ["select", name, "--dataset", "d", "--prompt-set", "s"]),
                       ("model", ["model", "add", name, "--source", tmp_path / "nowhere.gguf"]),
                       ("dataset", ["rank", "--dataset", name, "--prompt-set", "s"]),
                       ("LLaMA-Factory dataset", ["export", "--dataset", "d", "--prompt-set", "s", "--out",
                                                  tmp_path / "out.json", "--llamafactory", name])):
        assert_one_error(invoke("--db", seeded, *args), f"the {what} name", f"{code} (", f"at position {position}")
    assert snapshot(seeded) == before and not (tmp_path / "out.json").exists()


def test_names_may_hold_plain_spaces_and_any_script(cli, tmp_path: Path) -> None:
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    for name in ("alpaca v1", "日本語 データ", "naïve-ß", "Ελληνικά", "🎨 art"):
        assert cli("ingest", data, "--dataset", name).exit_code == 0, name


def test_names_are_stored_in_nfc(cli, db_url: str, tmp_path: Path) -> None:
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    assert cli("ingest", data, "--dataset", nfc).exit_code == 0
    result = cli("ingest", data, "--dataset", nfd)
    assert result.exit_code == 0 and "new 0, duplicates 1" in result.output
    with db.make_engine(db_url).connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM datasets")).scalars().all() == [nfc]


def test_quotes_and_unicode_in_names_round_trip(seeded: str, tmp_path: Path) -> None:
    data = tmp_path / "a.json"
    data.write_text(json.dumps([{"instruction": "i", "output": "o"}]))
    name = "it's \"quoted\"; DROP TABLE samples; -- ✓"
    assert invoke("--db", seeded, "ingest", data, "--dataset", name).exit_code == 0
    result = invoke("--db", seeded, "rank", "--dataset", name, "--prompt-set", "s")
    assert result.exit_code == 0, result.output
    assert "rankable: 0 of 1 samples" in result.output
