"""A model that cannot be loaded charges nothing; failed cells are counted and can be retried.

`selectit score` loads every model it needs before it claims a job: a missing API key, a server
that refuses, redirects, times out or answers 401 during the load probe is one `Error:` line and
exit 1, and no job or cell is charged an attempt. A fleet worker that cannot load its model leaves
the job queued, uncharged. Cells that fail are counted in the summary (exit 1), and
`score --retry-failed` gives cells at the attempt limit their attempts back.

Real parts: SQLite files and PostgreSQL, the fake OpenAI-compatible server of
tests/scoring/test_openai_engine.py (and small hostile servers on the same loopback port), Redis for the
fleet, the tiny model through tests/scorer_hooks.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa
from test_openai_engine import KEY, FakeServer, clean_engine_env  # noqa: F401 - the fixture is used by name
from test_torch_engine import records

from selectit.api import Store
from selectit.store import db
from selectit.store.schema import Job, Score


class Hostile:
    """A server on `port` that answers every request one bad way: "redirect" (302 to a closed
    port), "401", or "hang" (answers after `hang` seconds, past the client's timeout)."""

    def __init__(self, port: int, how: str, hang: float = 3.0) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                if how == "hang":
                    time.sleep(hang)
                code, headers = {"redirect": (302, {"Location": "http://127.0.0.1:9/v1/completions"}),
                                 "401": (401, {}), "hang": (200, {})}[how]
                body = json.dumps({"error": {"message": f"hostile {how}"}}).encode()
                try:
                    self.send_response(code)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _jobs_and_cells(engine: sa.Engine) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    with db.session_scope(engine) as s:
        jobs = [(str(j.status), j.attempts) for j in s.scalars(sa.select(Job))]
        cells = [(str(c.status), c.attempts) for c in s.scalars(sa.select(Score))]
    return jobs, cells


def _served(cli, tmp_path, tiny_model_dir, server: FakeServer) -> None:
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records(2)), encoding="utf-8")
    assert cli("init").exit_code == 0
    assert cli("ingest", data, "--dataset", "d").exit_code == 0
    out = cli("model", "add", "srv", "--endpoint", server.url, "--served-model", "tiny",
              "--tokenizer", tiny_model_dir, "--api-key-env", "TINY_KEY")
    assert out.exit_code == 0, out.output


def _one_error_line(out) -> str:
    lines = [line for line in out.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert out.exit_code == 1 and len(errors) == 1 and len(lines) == 1, out.output
    return errors[0]


def _serve_on(port: int, tiny_model_dir) -> FakeServer:
    """A `FakeServer` on `port` (where the model was registered: the port is part of its version)."""
    server = FakeServer(tiny_model_dir)
    server.httpd.shutdown()
    server.httpd.server_close()
    server.httpd = ThreadingHTTPServer(("127.0.0.1", port), server.httpd.RequestHandlerClass)
    server.httpd.daemon_threads = True
    threading.Thread(target=server.httpd.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("fault", ["no key", "refused", "redirect", "401", "timeout"])
def test_a_model_that_cannot_load_fails_score_before_any_job_is_claimed(fault, cli, engine, tmp_path,
                                                                        tiny_model_dir, monkeypatch) -> None:
    monkeypatch.setenv("TINY_KEY", KEY)
    server = FakeServer(tiny_model_dir)
    port = server.httpd.server_address[1]
    hostile = None
    try:
        _served(cli, tmp_path, tiny_model_dir, server)
        if fault == "no key":
            monkeypatch.delenv("TINY_KEY")
        else:
            server.close()  # nothing listens on the port any more
            if fault != "refused":
                hostile = Hostile(port, "hang" if fault == "timeout" else fault)
        for _ in range(4):  # more runs than a cell has attempts: none is charged
            line = _one_error_line(cli("score", "-q", "--request-timeout", "0.5", "--max-retries", "0"))
            assert "cannot load model srv" in line and "Nothing was claimed and no cell was charged" in line, line
            jobs, cells = _jobs_and_cells(engine)
            assert cells == [] and all(attempts == 0 for _, attempts in jobs), (jobs, cells)
        if hostile is not None:
            hostile.close()
            hostile = None
        if fault != "no key":
            server = _serve_on(port, tiny_model_dir)
        monkeypatch.setenv("TINY_KEY", KEY)
        out = cli("score", "-q")
        assert out.exit_code == 0 and "scored 10 cells, failed 0, skipped 0 already scored." in out.output, out.output
    finally:
        if hostile is not None:
            hostile.close()
        server.close()


def test_a_fleet_worker_that_cannot_load_its_model_leaves_the_job_queued_and_uncharged(
        postgres_url, redis_url, tmp_path, tiny_model_dir, monkeypatch) -> None:
    from selectit.jobs import planner
    from selectit.scoring import registry
    from selectit.scoring.engines import EngineOptions
    from selectit.settings import Settings
    from selectit.workers.app import fleet_of, make_app, queue_for

    monkeypatch.setenv("TINY_KEY", KEY)
    server = FakeServer(tiny_model_dir)
    store = Store(postgres_url)
    app = make_app(Settings(broker_url=redis_url), db_url=postgres_url, engine_options=EngineOptions(engine="openai"))
    try:
        with db.session_scope(store.engine) as s:
            registry.ensure_default_prompts(s)
        data = tmp_path / "d.json"
        data.write_text(json.dumps(records(2)), encoding="utf-8")
        store.ingest(data, "d")
        store.add_served_model("srv", server.url, "tiny", tokenizer=str(tiny_model_dir), api_key_env="TINY_KEY")
        (job_id,) = planner.plan(store.engine)
        fleet = fleet_of(app)
        monkeypatch.delenv("TINY_KEY")
        for _ in range(4):  # more deliveries than a job has attempts
            assert fleet.score_job(job_id)["status"] == "load failed"
        jobs, cells = _jobs_and_cells(store.engine)
        assert jobs == [("queued", 0)] and cells == []
        with db.session_scope(store.engine) as s:
            assert "TINY_KEY is not set" in s.get(Job, job_id).error
        assert fleet.queue_length(queue_for("srv")) == 0  # not sent again at once: the control loop re-sends it
        monkeypatch.setenv("TINY_KEY", KEY)
        assert fleet.score_job(job_id) == {"job_id": job_id, "status": "done", "scored": 10, "failed": 0}
        jobs, cells = _jobs_and_cells(store.engine)
        assert jobs == [("done", 1)] and cells == [("ok", 1)] * 10
    finally:
        fleet_of(app).close()
        app.close()
        store.close()
        server.close()


def test_failed_cells_are_counted_exit_1_and_retry_failed_tries_them_again(cli, db_url, tmp_path, tiny_model_dir,
                                                                          monkeypatch) -> None:
    recs = records(3)
    recs[1]["instruction"] = "POISON " + recs[1]["instruction"]
    data = tmp_path / "d.json"
    data.write_text(json.dumps(recs), encoding="utf-8")
    assert cli("init").exit_code == 0
    assert cli("ingest", data, "--dataset", "d").exit_code == 0
    assert cli("model", "add", "tiny", "--source", tiny_model_dir, "--dtype", "float32").exit_code == 0
    monkeypatch.setenv("SELECTIT_SCORER", "scorer_hooks:load")
    monkeypatch.setenv("SELECTIT_TEST_POISON", "POISON")
    for attempt in (1, 2, 3):
        out = cli("score", "-q")
        assert out.exit_code == 1, out.output
        assert (f"scored {10 if attempt == 1 else 0} cells, failed 5, skipped {0 if attempt == 1 else 10} "
                "already scored.") in out.output, out.output
        assert out.output.strip().splitlines()[-1] == "Error: 5 cells are failed: " + (
            "5 will be retried by the next `selectit score`" if attempt < 3 else
            "5 failed 3 times and are retried only by `selectit score --retry-failed`") + \
            ". `selectit status` counts them", out.output
    out = cli("score", "-q")  # at the limit: nothing is tried, and the run says so
    assert out.exit_code == 1 and "scored 0 cells, failed 0, skipped 10 already scored." in out.output, out.output
    assert "5 failed 3 times and are retried only by `selectit score --retry-failed`" in out.output

    summary = Store(db_url).score(retry_failed=True)  # the API: attempts back, tried once more (and failed)
    assert (summary.reset, summary.scored, summary.failed, summary.skipped) == (5, 0, 5, 10)
    assert (summary.retryable, summary.exhausted, summary.left_failed) == (5, 0, 5)

    monkeypatch.delenv("SELECTIT_TEST_POISON")
    out = cli("score", "-q", "--retry-failed")
    assert out.exit_code == 0, out.output
    assert ("scored 5 cells, failed 0, skipped 10 already scored (5 failed cells given their attempts back)."
            in out.output), out.output
    out = cli("score", "-q")
    assert out.exit_code == 0 and "scored 0 cells, failed 0, skipped 15 already scored." in out.output, out.output
