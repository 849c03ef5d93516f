"""Choosing the scoring engine (`--engine`, `$SELECTIT_ENGINE` and its options) and the provenance
of score rows: each row records the engine and its versions, and `selectit status` counts the cells
per engine. (The vLLM engine itself is tested in tests/scoring/test_vllm_engine.py, in its own environment.)
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from test_runner import DEMO, add_model, seed, tiny_dir  # noqa: F401 - tiny_dir is a fixture

from selectit.status import status_rows
from selectit.scoring.engines import ENV, EngineError, EngineOptions
from selectit.store import db
from selectit.store.schema import Score


@pytest.fixture
def clean_env(monkeypatch):
    """No engine setting from outside; whatever a command exports is undone after the test."""
    for name in ENV.values():
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_score_rows_record_the_engine_and_status_counts_cells_per_engine(engine, tmp_path, tiny_dir, cli,
                                                                         clean_env) -> None:
    seed(engine, tmp_path, "d", DEMO[:2])
    add_model(engine, "tiny", tiny_dir)
    out = cli("score", "-q", "--engine", "torch")
    assert out.exit_code == 0, out.output
    import torch
    import transformers

    with db.session_scope(engine) as session:
        rows = session.execute(sa.select(Score.engine, Score.engine_version, sa.func.count())
                               .group_by(Score.engine, Score.engine_version)).all()
    assert rows == [("torch", f"torch {torch.__version__}, transformers {transformers.__version__}", 10)]
    # cells stored before provenance existed count as `unknown`
    with db.session_scope(engine) as session:
        session.execute(sa.update(Score).where(Score.prompt_id == sa.select(sa.func.min(Score.prompt_id))
                                               .scalar_subquery()).values(engine=None, engine_version=None))
    (row,) = status_rows(engine)
    assert row.by_engine == (("torch", 8), ("unknown", 2))
    status = cli("status")
    assert status.exit_code == 0, status.output
    assert "torch 8," in status.output and "unknown 2" in status.output


def test_engine_options_come_from_the_environment(clean_env) -> None:
    assert EngineOptions.from_env() == EngineOptions()
    clean_env.setenv("SELECTIT_ENGINE", "vllm")
    clean_env.setenv("SELECTIT_TENSOR_PARALLEL_SIZE", "4")
    clean_env.setenv("SELECTIT_GPU_MEMORY_UTILIZATION", "0.8")
    clean_env.setenv("SELECTIT_VLLM_ARGS", '{"enforce_eager": true}')
    opts = EngineOptions.from_env()
    assert (opts.engine, opts.vllm.tensor_parallel_size, opts.vllm.gpu_memory_utilization) == ("vllm", 4, 0.8)
    assert opts.vllm.llm_kwargs() == {"enforce_eager": True}
    assert opts.options_for("vllm") is opts.vllm and opts.options_for("openai") is opts.openai
    clean_env.setenv("SELECTIT_ENGINE", "openai")
    clean_env.setenv("SELECTIT_TENSOR_PARALLEL_SIZE", "1")
    clean_env.setenv("SELECTIT_OPENAI_CONCURRENCY", "64")
    clean_env.setenv("SELECTIT_LOGPROBS_TOP", "5")
    clean_env.setenv("SELECTIT_REQUEST_TIMEOUT", "2.5")
    opts = EngineOptions.from_env()
    assert (opts.engine, opts.openai.concurrency, opts.openai.logprobs_top, opts.openai.request_timeout,
            opts.openai.max_retries) == ("openai", 64, 5, 2.5, 8)


def test_each_engine_owns_its_options_and_they_are_type_checked() -> None:
    from selectit.scoring.engines import OpenAIOptions, TorchOptions, VllmOptions

    opts = EngineOptions.of(engine="openai", device_map="auto", max_model_len=512, max_retries=2)
    assert opts.torch == TorchOptions("auto") and opts.vllm == VllmOptions(max_model_len=512)
    assert opts.openai == OpenAIOptions(max_retries=2) and opts.replace(max_retries=3).openai.max_retries == 3
    with pytest.raises(EngineError, match="the vllm engine's options must be a VllmOptions, not OpenAIOptions"):
        EngineOptions(vllm=OpenAIOptions())
    with pytest.raises(EngineError, match="unknown engine option"):
        EngineOptions.of(tensor_parallel=2)


@pytest.mark.parametrize("env,message", [
    ({"SELECTIT_ENGINE": "onnx"}, "unknown engine 'onnx'"),
    ({"SELECTIT_TENSOR_PARALLEL_SIZE": "two"}, "$SELECTIT_TENSOR_PARALLEL_SIZE='two' is not a valid int"),
    ({"SELECTIT_TENSOR_PARALLEL_SIZE": "2"}, "tensor and pipeline parallelism need --engine vllm"),
    ({"SELECTIT_ENGINE": "vllm", "SELECTIT_VLLM_ARGS": "[1]"}, "must be a JSON object"),
    ({"SELECTIT_GPU_MEMORY_UTILIZATION": "1.5"}, "must be in (0, 1]"),
    ({"SELECTIT_ENGINE": "openai", "SELECTIT_LOGPROBS_TOP": "0"}, "--logprobs-top must be 1 or more"),
    ({"SELECTIT_OPENAI_CONCURRENCY": "many"}, "$SELECTIT_OPENAI_CONCURRENCY='many' is not a valid int"),
    ({"SELECTIT_MAX_RETRIES": "-1"}, "--max-retries must be 0 or more"),
])
def test_bad_engine_settings_say_what_is_wrong(clean_env, env, message) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(EngineError, match=message.replace("(", r"\(").replace("[", r"\[").replace("$", r"\$")):
        EngineOptions.from_env()


def test_the_cli_refuses_bad_engine_options_before_scoring(cli, clean_env) -> None:
    out = cli("score", "--tensor-parallel-size", "2")
    assert out.exit_code == 1 and "Error: tensor and pipeline parallelism need --engine vllm" in out.output
    out = cli("score", "--engine", "vllm", "--vllm-args", "not json")
    assert out.exit_code == 1 and "Error:" in out.output


ECHO_ENGINE = '''
"""A third-party engine: every cell gets the same label probabilities."""
from selectit.contract import CellResult, ScoringEngine

PROBS = (0.05, 0.1, 0.4, 0.25, 0.1)


class EchoEngine(ScoringEngine):
    engine = "echo"

    def __init__(self, model, options):
        self.engine_version = f"echo 1.0 for {model.name} (engine option: {options.engine})"

    def score(self, requests, progress=None):
        return [CellResult(r.sample_id, p, PROBS[:r.scale], sum(PROBS[:r.scale]), 7, False)
                for r in requests for p in r.prompt_ids]


def load(model, options):
    return EchoEngine(model, options)
'''


def test_a_third_party_engine_from_an_entry_point_is_picked_by_name(tmp_path, tiny_dir) -> None:
    """A package that declares `[project.entry-points."selectit.engines"] echo = …` (here: its
    installed metadata on PYTHONPATH) is `selectit score --engine echo`, with no other setting."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "selectit_echo-1.0.dist-info").mkdir(parents=True)
    (site / "selectit_echo.py").write_text(ECHO_ENGINE)
    (site / "selectit_echo-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: selectit-echo\nVersion: 1.0\n")
    (site / "selectit_echo-1.0.dist-info" / "entry_points.txt").write_text(
        "[selectit.engines]\necho = selectit_echo:load\n")
    url = f"sqlite:///{tmp_path / 'echo.db'}"
    env = {k: v for k, v in os.environ.items() if k not in ENV.values() and k != "SELECTIT_SCORER"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])

    def selectit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "selectit", "--db", url, *args], env=env,
                              capture_output=True, text=True, timeout=300)

    data = tmp_path / "d.json"
    data.write_text(__import__("json").dumps(DEMO[:3]))
    for step in (["ingest", str(data), "--dataset", "d"], ["model", "add", "tiny", "--source", str(tiny_dir)]):
        assert selectit(*step).returncode == 0
    assert "echo" in selectit("score", "--help").stdout
    out = selectit("score", "-q", "--engine", "echo")
    assert out.returncode == 0, out.stderr
    engine = db.make_engine(url)
    with db.session_scope(engine) as session:
        rows = session.execute(sa.select(Score.engine, Score.engine_version, Score.p1, Score.p3, Score.mass,
                                         Score.n_tokens)).all()
    engine.dispose()
    assert len(rows) == 3 * 5
    assert set(rows) == {("echo", "echo 1.0 for tiny (engine option: echo)", 0.05, 0.4, 0.9, 7)}
    refused = selectit("score", "--engine", "onnx")
    assert refused.returncode == 2 and "'onnx' is not one of 'torch', 'vllm', 'openai', 'echo'" in refused.stderr


def test_split_on_failure_isolates_the_failing_items_and_keeps_order() -> None:
    from selectit.contract import split_on_failure

    calls: list[list[int]] = []
    errors: list[str] = []

    def run(xs: list[int]) -> list[float]:
        calls.append(xs)
        return [10 / (x - 3) for x in xs]

    out = split_on_failure([1, 2, 3, 4, 5], run, lambda exc: errors.append(type(exc).__name__))
    assert out == [(1, -5.0, None), (2, -10.0, None), (3, None, "ZeroDivisionError: division by zero"),
                   (4, 10.0, None), (5, 5.0, None)]
    # halves, down to the failing item alone: [1..5] → [1,2] ok, [3,4,5] → [3] fails, [4,5] ok
    assert calls == [[1, 2, 3, 4, 5], [1, 2], [3, 4, 5], [3], [4, 5]]
    assert errors == ["ZeroDivisionError"] * 3
    # a run that answers too few is a failure too: [1, 2] gets one answer, then each alone gets one
    short = split_on_failure([1, 2], lambda xs: [0])
    assert short == [(1, 0, None), (2, 0, None)]
