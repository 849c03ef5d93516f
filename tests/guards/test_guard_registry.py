"""`selectit prompts import` and `selectit model add`: what cannot be registered is refused whole.

A shared-context template's {input} on a line of its own, junk model sources, bad numbers for
--weight and --max-tokens; a line separator (U+2028, \x0c, …) inside a prompt does not split it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from guards import assert_one_error, invoke, snapshot


# --------------------------------------------------------- {input} shares no line with other fields
@pytest.mark.parametrize("line", [
    "Q: {instruction} {input}\\n{output}\\nRating: ",
    "{instruction}\\n{input} {output}\\nRating: ",
    "{instruction}\\n{output}\\n{input} Rating: ",
])
def test_prompt_input_placeholder_must_be_on_a_line_of_its_own(cli, db_url: str, tmp_path: Path, line: str) -> None:
    path = tmp_path / "p.txt"
    path.write_text(line + "\n", encoding="utf-8")
    assert cli("prompts").exit_code == 0
    before = snapshot(db_url)
    result = invoke("--db", db_url, "prompts", "import", path, "--set", "x", "--layout", "shared-context")
    assert_one_error(result, "{input}", "a line of its own")
    assert snapshot(db_url) == before
    path.write_text("{instruction}\\n{input}\\n{output}\\nRating: \n", encoding="utf-8")
    assert invoke("--db", db_url, "prompts", "import", path, "--set", "x", "--layout", "shared-context").exit_code == 0


# ----------------------------------------------------------------------------- broken model sources
def test_junk_model_sources_are_refused(cli, db_url: str, tmp_path: Path, tiny_model_dir: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + bytes(100))
    assert_one_error(invoke("--db", db_url, "model", "add", "j", "--source", junk), "junk.gguf")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "config.json").write_text("{not json")
    assert_one_error(invoke("--db", db_url, "model", "add", "b", "--source", broken), "config.json")
    models = invoke("--db", db_url, "models")
    assert models.exit_code == 0 and " j " not in models.output and " b " not in models.output


# ------------------------------------------------------------------------------------ model numbers
@pytest.mark.parametrize("option, value, phrase", [
    ("--max-tokens", "-5", "--max-tokens"), ("--max-tokens", "0", "--max-tokens"),
    ("--weight", "inf", "--weight"), ("--weight", "nan", "--weight"), ("--weight", "1e309", "--weight"),
    ("--weight", "0", "--weight"), ("--weight", "-1", "--weight"),
])
def test_model_add_refuses_bad_numbers(cli, db_url: str, tiny_model_dir: Path, option: str, value: str,
                                       phrase: str) -> None:
    assert cli("model", "add", "tiny", "--source", tiny_model_dir, "--dtype", "float32").exit_code == 0
    before = snapshot(db_url)
    result = invoke("--db", db_url, "model", "add", "tiny", "--source", tiny_model_dir, "--dtype", "float32",
                    f"{option}={value}")
    assert_one_error(result, phrase)
    assert snapshot(db_url) == before


# ------------------------------------------------------------- only \n (or \r) ends a prompt's line
def test_line_separators_inside_a_prompt_do_not_split_it(cli, db_url: str, tmp_path: Path) -> None:
    import sqlalchemy as sa

    from selectit.store import db

    inside = "\u2028\u2029\x85\x0b\x0c\x1c\x1d\x1e"
    path = tmp_path / "p.txt"
    path.write_text(f"Rate{inside}it.\nAnd{inside}this.\r\nLast one.", encoding="utf-8")
    assert cli("prompts", "import", path, "--set", "x", "--layout", "reference").exit_code == 0
    engine = db.make_engine(db_url)
    with engine.connect() as conn:
        templates = conn.execute(sa.text("SELECT template FROM prompts WHERE set_name = 'x' ORDER BY position")
                                 ).scalars().all()
    engine.dispose()
    assert templates == [f"Rate{inside}it.\n", f"And{inside}this.\n", "Last one."]
