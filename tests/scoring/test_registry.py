"""Model versions, label ids, prompt sets, layouts and the token-level formulas."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import REFERENCE_PROMPTS, reference_prompt_lines
from tiny_model import build_tiny_model, build_tokenizer

from selectit.formulas import normalized, token_score
from selectit.scoring import loading, registry
from selectit.scoring.labels import LabelError, label_token_ids
from selectit.scoring.registry import RegistryError, render
from selectit.store import db
from selectit.store.schema import LLM, Prompt

# -- token-level formulas, worked by hand ---------------------------------------------------------

def test_token_score_paper_by_hand():
    # p = (0.05, 0.1, 0.25, 0.05, 0.05), Σp = 0.5 → P' = (0.1, 0.2, 0.5, 0.1, 0.1), S_base = 3,
    # Σ|P'_k − 0.5| = 0.4 + 0.3 + 0 + 0.4 + 0.4 = 1.5, S_token = 3 × 1.5 / 4 = 1.125
    s_base, s_token = token_score([0.05, 0.1, 0.25, 0.05, 0.05], "paper")
    assert s_base == 3
    assert s_token == pytest.approx(1.125, abs=1e-12)


def test_token_score_reference_code_by_hand():
    # P' = softmax(0.1, 0.2, 0.5, 0.1, 0.1): Z = 3e^0.1 + e^0.2 + e^0.5 = 6.185636783…
    # S_base = 3; Σ|P'_k − P'_3| = (3(e^0.5 − e^0.1) + (e^0.5 − e^0.2)) / Z = 0.332700…
    # S_token = 3 × 0.332700 / 4 = 0.249525…
    s_base, s_token = token_score([0.05, 0.1, 0.25, 0.05, 0.05], "reference-code")
    assert s_base == 3
    assert s_token == pytest.approx(0.249525, abs=2e-6)
    assert sum(normalized([0.05, 0.1, 0.25, 0.05, 0.05], "reference-code")) == pytest.approx(1.0)


def test_token_score_ties_take_the_smaller_label():
    # P' = (0.4, 0.4, 0.2): S_base = 1, Σ|P' − 0.4| = 0.2, S_token = 1 × 0.2 / 2 = 0.1
    assert token_score([0.2, 0.2, 0.1]) == (1, pytest.approx(0.1))


# -- label ids --------------------------------------------------------------------------------------

def test_label_ids_are_the_digit_tokens_in_each_layout():
    tok = build_tokenizer()
    digits = [tok.convert_tokens_to_ids(str(k)) for k in range(1, 10)]
    for context in registry.LABEL_CONTEXT.values():
        assert label_token_ids(tok, context) == digits


def test_a_label_that_is_two_tokens_is_refused():
    tok = build_tokenizer(split_digit="7")
    with pytest.raises(LabelError) as err:
        label_token_ids(tok, "\nRating: ", "model 'x', layout shared-context: ")
    assert str(err.value) == (
        "model 'x', layout shared-context: the label '7' is not a single token after '\\nRating: ' "
        "(tokens ['7', 'Â§']); selectit reads each rating 1..9 as one token, so this model cannot be used"
    )


# -- layouts ----------------------------------------------------------------------------------------

def reference_lines() -> list[str]:
    return reference_prompt_lines()


def test_reference_layout_bytes_with_and_without_input():
    line = reference_lines()[0]
    assert line.endswith("\n")
    without = render("reference", line, "Name a color.", "", "Blue.")
    assert without.text == line + "\nInstruction:Name a color.\nResponse:Blue.\nThe answer is: \n"
    with_input = render("reference", line, "Translate.", "Hallo", "Hello")
    assert with_input.text == line + "\nInstruction:Translate.\nHallo\nResponse:Hello\nThe answer is: \n"
    assert (with_input.head, with_input.response, with_input.tail) == (
        line + "\nInstruction:Translate.\nHallo\nResponse:", "Hello", "\nThe answer is: \n")


def test_shared_context_layout_fills_plainly_and_drops_an_empty_input_line():
    template = "I: {instruction}\nIn: {input}\nR: {output}\nQ about {instruction}?\nRating: "
    p = render("shared-context", template, "Say {output} {0.__class__}", "", "ok")
    assert p.text == "I: Say {output} {0.__class__}\nR: ok\nQ about Say {output} {0.__class__}?\nRating: "
    q = render("shared-context", template, "Add", "2+2", "4")
    assert (q.head, q.response, q.tail) == ("I: Add\nIn: 2+2\nR: ", "4", "\nQ about Add?\nRating: ")


def test_default_prompts_share_the_sample_first():
    texts = [render("shared-context", t, "Do X.", "", "Done.").text for t in registry.DEFAULT_TEMPLATES]
    assert len(set(texts)) == 5
    assert all(t.startswith(texts[0][:100]) and "Done." in t[:200] for t in texts)
    assert all(t.endswith("Rating: ") for t in texts)


# -- prompt sets (both databases) -----------------------------------------------------------------

def test_import_keeps_readlines_newlines_and_first(engine, tmp_path):
    f = tmp_path / "p.txt"
    f.write_bytes(b"Rate A.\nRate B.\nRate C.")  # the last line has no newline
    with db.session_scope(engine) as s:
        rows = registry.import_prompts(s, f, "three", "reference")
        assert [p.template for p in rows] == ["Rate A.\n", "Rate B.\n", "Rate C."]
        assert render("reference", rows[2].template, "i", "", "o").text == "Rate C.\nInstruction:i\nResponse:o\nThe answer is: \n"
        two = registry.import_prompts(s, f, "two", "reference", first=2)
        assert [p.template for p in two] == ["Rate A.\n", "Rate B.\n"]
    lines = reference_lines()  # skips without ../shared
    with db.session_scope(engine) as s:
        ref = registry.import_prompts(s, REFERENCE_PROMPTS, "ref", "reference", first=5)
        assert [p.template for p in ref] == lines[:5]


def test_editing_a_prompt_makes_a_new_version(engine, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Rate A.\nRate B.\n")
    with db.session_scope(engine) as s:
        first = [p.id for p in registry.import_prompts(s, f, "s", "reference")]
    f.write_text("Rate A.\nRate B better.\n")
    with db.session_scope(engine) as s:
        second = [p.id for p in registry.import_prompts(s, f, "s", "reference")]
        assert second[0] == first[0] and second[1] != first[1]
        assert s.get(Prompt, first[1]).active is False
    f.write_text("Rate A.\nRate B.\n")
    with db.session_scope(engine) as s:  # going back re-activates the old version (its scores count again)
        assert [p.id for p in registry.import_prompts(s, f, "s", "reference")] == first
        assert [p.id for p in registry.active_prompts(s, "s")] == first
        assert s.scalar(sa.select(sa.func.count()).select_from(Prompt).where(Prompt.set_name == "s")) == 3


def test_prompt_errors(engine, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Rate A.\n")
    with db.session_scope(engine) as s:
        with pytest.raises(RegistryError, match=r"--first 3 asks for more prompts than the file's 1 lines"):
            registry.import_prompts(s, f, "s", "reference", first=3)
        with pytest.raises(RegistryError, match=r"exactly one \{output\} placeholder"):
            registry.import_prompts(s, f, "s", "shared-context")
        f.write_text("{instruction} {output} Score?\n")
        with pytest.raises(RegistryError, match=r"must end with ': ', where the rating digit is read"):
            registry.import_prompts(s, f, "s", "shared-context")


def test_cli_prompts_import_and_list(cli, tmp_path):
    assert cli("init").exit_code == 0  # creates the built-in set `default`
    f = tmp_path / "p.txt"
    f.write_text("{instruction}\\n{output}\\nScore: \n")
    r = cli("prompts", "import", f, "--set", "mine", "--layout", "shared-context", "--scale", "3")
    assert r.exit_code == 0, r.output
    assert "prompt set mine: 1 active prompts (shared-context, scale 3)" in r.output
    r = cli("prompts")
    assert "default" in r.output and "mine" in r.output and "shared-context" in r.output
    r = cli("prompts", "import", tmp_path / "missing.txt", "--set", "x", "--layout", "reference")
    assert r.exit_code == 1 and f"Error: {tmp_path / 'missing.txt'}: no such file" in r.output


# -- model versions (both databases) --------------------------------------------------------------

@pytest.fixture(scope="module")
def other_tiny_dir(tmp_path_factory) -> Path:
    """The same architecture with other weights (another seed): another fingerprint."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-other"), seed=1)


def test_model_versions(engine, tiny_model_dir, other_tiny_dir):
    with db.session_scope(engine) as s:
        a = registry.add_model(s, "tiny", str(tiny_model_dir), dtype="float32")
        assert a.n_params == 56992 and a.label_ids["reference"] == a.label_ids["shared-context"]
        assert a.source == str(tiny_model_dir) and len(a.fingerprint) == 64
        assert a.max_tokens == 1024  # the model's own context is below the 4096 default
    with db.session_scope(engine) as s:
        again = registry.add_model(s, "tiny", str(tiny_model_dir), dtype="float32", weight=3.0)
        assert again.id == a.id and again.weight == 3.0
        bf16 = registry.add_model(s, "tiny", str(tiny_model_dir), dtype="bfloat16")
        other = registry.add_model(s, "tiny", str(other_tiny_dir), dtype="bfloat16")
        assert len({a.id, bf16.id, other.id}) == 3 and other.fingerprint != a.fingerprint
        assert [(m.id, m.active) for m in registry.list_models(s)] == [(a.id, False), (bf16.id, False), (other.id, True)]
        back = registry.add_model(s, "tiny", str(tiny_model_dir), dtype="float32")
        assert back.id == a.id and registry.find_model(s, "tiny").id == a.id
        assert s.scalar(sa.select(sa.func.count()).select_from(LLM)) == 3


def test_cli_model_add_refuses_split_labels_and_lists(cli, tiny_model_dir, tmp_path):
    bad = build_tiny_model(tmp_path / "bad", split_digit="7")
    r = cli("model", "add", "bad", "--source", bad)
    assert r.exit_code == 1
    assert "Error: model 'bad', layout reference: the label '7' is not a single token after" in r.output
    r = cli("model", "add", "tiny", "--source", tiny_model_dir, "--dtype", "float32")
    assert r.exit_code == 0 and "model tiny added: version 1, float32, 56,992 parameters" in r.output
    r = cli("model", "add", "tiny", "--source", tiny_model_dir, "--dtype", "float32")
    assert "model tiny unchanged: version 1" in r.output
    r = cli("models")
    assert "tiny" in r.output and "float32" in r.output and "56,992" in r.output
    r = cli("model", "add", "x", "--source", tmp_path / "nowhere")
    assert r.exit_code == 1 and "no such file or directory; give a .gguf file, a model directory" in r.output


def test_a_model_load_draws_no_transformers_bar_and_leaves_its_setting_as_it_was(tiny_model_dir, capfd) -> None:
    """The command says "loading model NAME…" itself: transformers' own "Loading weights" bar on
    stderr would be drawn through it (and fill a log); a notebook's own setting comes back after."""
    from transformers.utils import logging as hf_logging

    src = loading.resolve_source(str(tiny_model_dir))
    for enabled in (True, False):
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
        loading.load_hf_model(src, "float32", "cpu")
        loading.load_hf_tokenizer_for_model(src)
        assert hf_logging.is_progress_bar_enabled() is enabled
    hf_logging.enable_progress_bar()
    assert "Loading weights" not in capfd.readouterr().err
