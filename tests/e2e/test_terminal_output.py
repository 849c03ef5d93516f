"""Stored text and names reach the screen as text: rich markup is printed, not interpreted, and
control characters are escaped on a terminal (a real pseudo-terminal) but kept exact in pipes.

On SQLite and PostgreSQL; the terminal tests run the installed `selectit` in a child process.
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from guards import invoke
from test_views import seed

from selectit.store.db import session_scope
from selectit.store.schema import Sample

MARKUP = "[INST] Say hi [/INST] [/b] [bold]kept[/bold] :thumbs_up:"
CONTROL = "title \x1b]0;pwned\x07 csi \x1b[2J c1 \x9b31m"


def _store_with(engine: sa.Engine, instruction: str, dataset: str) -> None:
    """A scored dataset `dataset` whose first sample's instruction is `instruction`."""
    ids = seed(engine, dataset=dataset)
    with session_scope(engine) as session:
        session.execute(sa.update(Sample).where(Sample.id == ids["s1"]).values(instruction=instruction))


def test_rich_markup_in_names_and_text_is_printed_verbatim(engine, db_url: str, tmp_path: Path) -> None:
    _store_with(engine, MARKUP, "x[/y]")
    prompts = tmp_path / "p.txt"
    prompts.write_text("Rate [/x] {instruction} {output}: \n")
    imported = invoke("--db", db_url, "prompts", "import", prompts, "--set", "p[/x]", "--layout", "shared-context")
    assert imported.exit_code == 0, imported.output
    assert "prompt set p[/x]:" in imported.output
    for args in (["status"], ["datasets"], ["prompts"], ["models"],
                 ["rank", "--dataset", "x[/y]", "--prompt-set", "s"],
                 ["sql", "SELECT instruction FROM store.samples ORDER BY id"]):
        result = invoke("--db", db_url, *args)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.exception)
        assert result.exit_code == 0, (args, result.output)
        if args[0] in ("status", "datasets", "rank"):
            assert "x[/y]" in result.output, (args, result.output)
        if args[0] in ("rank", "sql"):
            # rank shows the first 60 characters of the instruction
            assert MARKUP[:60] in result.output, (args, result.output)
    assert "p[/x]" in invoke("--db", db_url, "prompts").output


def _run(args: list[str], *, terminal: bool) -> bytes:
    """stdout and stderr of `selectit ARGS`, through a pseudo-terminal or a pipe."""
    command = [str(Path(sys.executable).with_name("selectit")), *args]
    if not terminal:
        done = subprocess.run(command, capture_output=True, timeout=120, check=False)
        return done.stdout + done.stderr
    parent, child = pty.openpty()
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=child, stderr=child)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(parent, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(parent)
    proc.wait(timeout=120)
    return out


def test_control_characters_are_escaped_on_a_terminal_and_exact_in_a_pipe(engine, db_url: str) -> None:
    _store_with(engine, CONTROL, "d")
    query = ["--db", db_url, "sql", "SELECT instruction FROM store.samples ORDER BY id LIMIT 1"]
    for fmt in ("table", "csv", "json"):
        shown = _run([*query, "--format", fmt], terminal=True)
        assert b"\x1b]" not in shown and b"\x07" not in shown and b"\x1b[2J" not in shown, (fmt, shown)
        assert "\x9b".encode() not in shown, (fmt, shown)
        assert (rb"\u001b]0;pwned\u0007" if fmt == "json" else rb"\x1b]0;pwned\x07") in shown, (fmt, shown)
        assert rb"\x9b31m" in shown, (fmt, shown)
    piped = _run([*query, "--format", "csv"], terminal=False)
    assert piped == ("instruction\n" + CONTROL + "\n").encode(), piped
    ranked = _run(["--db", db_url, "rank", "--dataset", "d", "--prompt-set", "s"], terminal=True)
    assert b"\x1b]0;" not in ranked and rb"\x1b]0;pwned" in ranked, ranked


def test_model_add_says_what_it_is_doing_on_a_terminal_only(tmp_path: Path) -> None:
    """Registering a GGUF takes a minute: a terminal sees a spinner naming the step; a pipe gets the
    result line alone."""
    from tiny_model import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    on_terminal = _run(["--db", f"sqlite:///{tmp_path / 'a.db'}", "model", "add", "tiny", "--source", str(model)],
                       terminal=True)
    assert b"registering tiny: reading" in on_terminal and b"model tiny added" in on_terminal
    piped = _run(["--db", f"sqlite:///{tmp_path / 'b.db'}", "model", "add", "tiny", "--source", str(model)],
                 terminal=False)
    assert b"registering" not in piped and b"model tiny added: version 1" in piped


def test_score_says_which_model_it_loads_on_a_terminal_only(tmp_path: Path, tiny_model_dir: Path) -> None:
    """While a model loads, a terminal sees "loading model NAME…" (not a bar frozen at 0); a pipe
    gets the result line alone."""
    data = tmp_path / "a.jsonl"
    data.write_text('{"instruction": "Say hi.", "output": "Hi."}\n')
    shown = {}
    for terminal in (True, False):
        db_args = ["--db", f"sqlite:///{tmp_path / f'{terminal}.db'}"]
        for args in (["init"], ["ingest", str(data), "--dataset", "d"],
                     ["model", "add", "tiny", "--source", str(tiny_model_dir), "--dtype", "float32"]):
            result = invoke(*db_args, *args)
            assert result.exit_code == 0, result.output
        shown[terminal] = _run([*db_args, "score"], terminal=terminal)
    assert "loading model tiny…".encode() in shown[True] and b"cells, failed" in shown[True], shown[True]
    assert b"de-quantizing" not in shown[True]  # a model directory: nothing to de-quantize
    assert b"loading" not in shown[False] and b"scored 5 cells, failed 0" in shown[False], shown[False]


def test_the_loading_line_names_a_gguf_only_until_it_is_de_quantized(tmp_path: Path, monkeypatch) -> None:
    from selectit.scoring.loading import CACHE_ENV, loading_note

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    sha = "ab" * 32  # a GGUF model version's fingerprint is the file's sha256
    assert loading_note("m", str(gguf), sha) == "loading model m (de-quantizing GGUF, first time only)…"
    assert loading_note("m", str(gguf), sha, served=True) == "loading model m…"
    (tmp_path / "cache" / sha).mkdir(parents=True)
    (tmp_path / "cache" / sha / "model.safetensors").write_bytes(b"")
    assert loading_note("m", str(gguf), sha) == "loading model m…"  # de-quantized once: cached
    assert loading_note("m", str(tmp_path / "gone.gguf"), sha) == "loading model m…"
