"""The `openai` engine against servers that misbehave: ones that send the API key back, drip an
answer a byte at a time, list nonsense, or give probabilities no model gives.

Every server is `FakeServer` (tests/scoring/test_openai_engine.py) on loopback; every database a real file.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from test_openai_engine import FakeServer
from test_torch_engine import records

from selectit.cli import main
from selectit.scoring.endpoints import MASK, redact
from selectit.store import db
from selectit.store.schema import Job, Score

#: A key with every character the escapes treat apart: a quote of each kind, a backslash, a slash,
#: a plus; between them runs of six plain characters, so an escaped copy still shows a piece.
KEY = "sk-live7Qa'Xv93Kd\\Rt5WqJ\"Pz8LmB/Hy2Nc4+Ge7Ux"
PIECES = sorted({KEY[i:i + 6] for i in range(len(KEY) - 5)})


def shapes(text: str) -> list[str]:
    """`text` as a server might send it back: raw, repr'd, JSON-escaped, URL-encoded, and repr of JSON."""
    return [text, repr(text), json.dumps(text), quote(text, safe=""), quote_plus(text), repr(json.dumps(text))]


def echoes(text: str) -> str:
    """Every shape of `text` at offsets 0, 7, 14 … 56 of a stretch: whatever the cut point (300, 500,
    1000 characters into a message), some copy of the key straddles it."""
    return " ".join("." * pad + shape for pad in range(0, 60, 7) for shape in shapes(text))


def leaked(text: str | bytes) -> list[str]:
    """The 6-character pieces of KEY found in `text`."""
    data = text.encode("utf-8", "replace") if isinstance(text, str) else text
    return [p for p in PIECES if p.encode() in data]


def httpbin(auth: str) -> dict:
    """What an echo service answers: the request's headers and URL, and no `choices`."""
    return {"headers": {"Authorization": auth, "Accept": "*/*"}, "url": f"http://x/v1/completions?key={quote(KEY)}",
            "echo": echoes(auth)}


@pytest.fixture
def hostile(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TINY_KEY", KEY)
    srv = FakeServer(tiny_model_dir, key=KEY)
    yield srv
    srv.close()


def test_redact_masks_every_shape_of_the_key_before_it_cuts():
    for shape in shapes(KEY) + shapes(f"Bearer {KEY}"):
        for cut in range(1, 120):
            text = "x" * (100 - len(shape) // 2) + shape + " tail"
            out = redact(text, KEY, limit=cut)
            assert not leaked(out) and len(out) <= cut
        assert MASK in redact(shape, KEY) and not leaked(redact(shape, KEY))
    assert [redact(shape, KEY) for shape in shapes(KEY)] == [MASK, f"'{MASK}'", f'"{MASK}"', MASK, MASK,
                                                             f"'\"{MASK}\"'"]
    assert redact(KEY.upper(), KEY) == KEY.upper()  # another string is left as it is
    assert redact("abc", None, limit=2) == "a…"


def test_no_piece_of_the_key_reaches_the_terminal_the_logs_or_the_database(hostile, tiny_model_dir, tmp_path,
                                                                           caplog, capfd):
    """The key sent back in every shape, by every path: the probe at load, the cells, the chat
    layout, registration errors; then stdout, stderr, the logs and every byte of the SQLite file."""
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "keys.db"
    runner = CliRunner()
    printed: list[str] = []

    def cli(*args: object) -> str:
        out = runner.invoke(main, ["--db", f"sqlite:///{path}", *map(str, args)], catch_exceptions=False)
        printed.append(out.output)
        return out.output

    data = tmp_path / "d.json"
    data.write_text(json.dumps(records(2)), encoding="utf-8")
    cli("init")
    cli("ingest", data, "--dataset", "d")
    served = ("--endpoint", hostile.url, "--served-model", "tiny", "--tokenizer", tiny_model_dir,
              "--api-key-env", "TINY_KEY")
    # registration: a listing whose model ids hold the key, then a 401 that quotes it
    hostile.extra_models = [{"id": s} for s in shapes(f"Bearer {KEY}")]
    assert "Error: " in cli("model", "add", "srv", "--endpoint", hostile.url, "--served-model", "nope",
                            "--tokenizer", tiny_model_dir, "--api-key-env", "TINY_KEY")
    hostile.models_fault = lambda auth: (401, {"error": {"message": f"bad key {echoes(auth)}"}})
    assert "HTTP 401: bad key" in cli("model", "add", "srv", *served)
    hostile.models_fault = lambda auth: None
    assert "added" in cli("model", "add", "srv", *served)

    # the load probe: every completions answer echoes the request, so no way to read probabilities is found
    hostile.fault = lambda body, n: (200, httpbin(f"Bearer {KEY}"))
    out = cli("score", "--max-retries", "1")  # a load failure: nothing claimed, no cell charged
    assert "Error: cannot load model srv" in out and "gives neither" in out, out

    # the cells: the probe's short prompt is answered; each cell gets one of the hostile answers
    def cell_fault(body, n):
        probe = body["messages"][0]["content"] == "Rating: " if "messages" in body else len(body["prompt"]) < 10
        if probe:
            return None
        auth = f"Bearer {KEY}"
        bad_value = {"choices": [{"logprobs": {"top_logprobs": [{f"token_id:{t}": auth
                                                                 for t in body.get("logprob_token_ids", [])}]}}]}
        return [(200, httpbin(auth)), (400, {"error": {"message": echoes(auth)}}),
                (500, {"error": {"message": echoes(auth)}}), (429, {"detail": echoes(auth)}),
                (200, bad_value), (422, {"unexpected": [echoes(auth)]})][n % 6]

    hostile.fault = cell_fault
    out = cli("score", "--max-retries", "1")
    assert "scored 0 cells, failed 10" in out, out
    cli("model", "add", "srv", *served, "--chat")
    out = cli("score", "--max-retries", "0")
    assert "scored 0 cells, failed 10" in out, out
    # what `selectit sql` shows of the failures
    cli("sql", "SELECT error FROM store.scores", "--format", "json")
    cli("sql", "SELECT error FROM store.jobs", "--format", "json")

    store = db.open_store(f"sqlite:///{path}")
    with db.session_scope(store) as s:
        cells = s.scalars(sa.select(Score.error)).all()
        jobs = [e for e in s.scalars(sa.select(Job.error)) if e]
    store.dispose()
    captured = capfd.readouterr()
    for where, text in [("stdout", "".join(printed) + captured.out), ("stderr", captured.err),
                        ("logs", caplog.text)]:
        assert not leaked(text), f"{where}: {leaked(text)}"
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-journal")):
        if f.exists():
            assert not leaked(f.read_bytes()), f"{f.name}: {leaked(f.read_bytes())}"
    # the failures say what the server sent, the key masked and the message cut
    assert len(cells) == 20 and all(cells)
    assert any("Bearer ***" in e for e in cells)  # jobs.error is checked above with the rest of the file's bytes
    assert all(len(e) < 1200 for e in cells + jobs)


def test_a_server_that_drips_its_answer_is_cut_off_at_the_request_timeout(hostile, tiny_model_dir, sqlite_url,
                                                                          tmp_path, monkeypatch):
    """httpx's timeout bounds each read; a byte every half second never trips it. The deadline is on
    the whole request: the probe at load and the cells both fail with the timeout, and `score` ends."""
    monkeypatch.setenv("SELECTIT_MAX_JOB_ATTEMPTS", "1")
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records(1)), encoding="utf-8")

    def selectit(*args: object) -> str:
        return CliRunner().invoke(main, ["--db", sqlite_url, *map(str, args)], catch_exceptions=False).output

    def score() -> str:
        """`score` on a thread: the bound on the wait is the harness's (a run that never ends fails the
        test instead of hanging it), not a claim about speed."""
        out: list[str] = []
        run = threading.Thread(target=lambda: out.append(selectit("score", "--request-timeout", "2",
                                                                  "--max-retries", "0")), daemon=True)
        run.start()
        run.join(120)
        assert out, "score did not end"
        return out[0]

    selectit("init")
    selectit("ingest", data, "--dataset", "d")
    selectit("model", "add", "srv", "--endpoint", hostile.url, "--served-model", "tiny", "--tokenizer",
             tiny_model_dir, "--api-key-env", "TINY_KEY")
    hostile.fault = lambda body, n: "drip"
    assert "did not answer the probe: no answer from" in score()
    hostile.fault = lambda body, n: "drip" if len(body["prompt"]) > 10 else None
    assert "scored 0 cells, failed 5" in score()
    with db.session_scope(db.open_store(sqlite_url)) as s:
        jobs = s.scalars(sa.select(Job.error).order_by(Job.id)).all()
        errors = s.scalars(sa.select(Score.error)).all()
    assert jobs  # the probe's failure was a load failure: no cell was charged for it
    assert len(errors) == 5 and all("within 2 s (after 1 tries)" in e for e in errors)


# ------------------------------------------------------------------------------------------------
# Registration: one `Error:` line for whatever a server or a URL holds


@pytest.mark.parametrize("max_model_len", ["abc", b"1e400", [5]])
def test_a_listing_with_a_context_that_is_no_number_is_one_error_line(hostile, tiny_model_dir, cli, max_model_len):
    hostile.max_model_len = max_model_len
    assert cli("init").exit_code == 0
    out = cli("model", "add", "srv", "--endpoint", hostile.url, "--served-model", "tiny", "--tokenizer",
              tiny_model_dir, "--api-key-env", "TINY_KEY")
    assert out.exit_code == 1 and out.output.count("Error:") == 1 and "Traceback" not in out.output
    assert "the server's /v1/models gives max_model_len" in out.output, out.output
    hostile.max_model_len = 4096.0  # a whole number written as a float is a context all the same
    assert cli("model", "add", "srv", "--endpoint", hostile.url, "--served-model", "tiny", "--tokenizer",
               tiny_model_dir, "--api-key-env", "TINY_KEY").exit_code == 0


@pytest.mark.parametrize("url, why", [("http://127.0.0.1:99999", "Port out of range"),
                                      ("http://127.0.0.1:ab", "Port could not be cast"),
                                      ("http://[::1/v1", "Invalid IPv6 URL"),
                                      ("http://127.0.0.1:0/v1", "port 0")])
def test_an_endpoint_url_that_cannot_be_parsed_is_one_error_line(sqlite_url, url, why):
    assert CliRunner().invoke(main, ["--db", sqlite_url, "init"]).exit_code == 0
    out = CliRunner().invoke(main, ["--db", sqlite_url, "model", "add", "srv", "--endpoint", url,
                                    "--served-model", "tiny"], catch_exceptions=False)
    assert out.exit_code == 1 and out.output.count("Error:") == 1 and "Traceback" not in out.output
    assert f"--endpoint {url!r}" in out.output and why in out.output, out.output


def test_a_parameter_count_beyond_64_bits_is_one_error_line(hostile, tiny_model_dir, cli):
    assert cli("init").exit_code == 0
    out = cli("model", "add", "srv", "--endpoint", hostile.url, "--served-model", "tiny", "--tokenizer",
              tiny_model_dir, "--api-key-env", "TINY_KEY", "--params", "99999999999999999999999")
    assert out.exit_code == 1 and out.output.count("Error:") == 1, out.output
    assert "--params must be a positive parameter count below 2**63" in out.output


# ------------------------------------------------------------------------------------------------
# Probabilities no model gives


@pytest.mark.parametrize("chat", [False, True])
def test_probabilities_above_one_fail_the_cell_as_the_servers_fault(hostile, tiny_model_dir, cli, engine, tmp_path,
                                                                    chat):
    """A log-probability of 0.5 for every label (p = 1.65 each, mass 8.2), or a chat answer that lists
    the digit 3 three times at log-probability 0 (p(3) = 3): failed cells, never ratings."""
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records(2)), encoding="utf-8")
    assert cli("init").exit_code == 0
    assert cli("ingest", data, "--dataset", "d").exit_code == 0
    assert cli("model", "add", "srv", "--endpoint", hostile.url, "--served-model", "tiny", "--tokenizer",
               tiny_model_dir, "--api-key-env", "TINY_KEY", *(["--chat"] if chat else [])).exit_code == 0

    def fault(body, n):
        if chat:
            three = {"token": "3", "logprob": 0.0}
            return 200, {"choices": [{"logprobs": {"content": [{**three, "top_logprobs": [three] * 3}]}}]}
        if body.get("logprob_token_ids"):
            top = {f"token_id:{t}": 0.5 for t in body["logprob_token_ids"]}
            return 200, {"choices": [{"logprobs": {"tokens": ["token_id:1"], "token_logprobs": [0.5],
                                                   "top_logprobs": [top]}}]}
        return None

    hostile.fault = fault
    out = cli("score", "-q")
    assert out.exit_code == 1 and "scored 0 cells, failed 10" in out.output, out.output  # 1: failed cells left
    with db.session_scope(engine) as s:
        rows = s.execute(sa.select(Score.p1, Score.p3, Score.mass, Score.error)).all()
    assert len(rows) == 10 and all(r.p1 is None and r.p3 is None and r.mass is None for r in rows)
    total = "sum to 3, above 1" if chat else "sum to 8.244, above 1"
    assert all("not a distribution" in r.error and total in r.error and "a fault of the server" in r.error
               for r in rows), rows[0].error
