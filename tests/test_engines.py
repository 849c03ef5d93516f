"""Choosing the scoring engine (`--engine`, `$SELECTIT_ENGINE` and its options) and the provenance
of score rows: each row records the engine and its versions, and `selectit status` counts the cells
per engine. (The vLLM engine itself is tested in tests/test_vllm_engine.py, in its own environment.)
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from test_jobs import DEMO, add_model, seed, tiny_dir  # noqa: F401 - tiny_dir is a fixture

from selectit import db
from selectit.engines import ENV, EngineError, EngineOptions
from selectit.schema import Score
from selectit.status import status_rows


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
    assert (opts.engine, opts.tensor_parallel_size, opts.gpu_memory_utilization) == ("vllm", 4, 0.8)
    assert opts.llm_kwargs() == {"enforce_eager": True}
    clean_env.setenv("SELECTIT_ENGINE", "openai")
    clean_env.setenv("SELECTIT_TENSOR_PARALLEL_SIZE", "1")
    clean_env.setenv("SELECTIT_OPENAI_CONCURRENCY", "64")
    clean_env.setenv("SELECTIT_LOGPROBS_TOP", "5")
    clean_env.setenv("SELECTIT_REQUEST_TIMEOUT", "2.5")
    opts = EngineOptions.from_env()
    assert (opts.engine, opts.concurrency, opts.logprobs_top, opts.request_timeout, opts.max_retries) == (
        "openai", 64, 5, 2.5, 8)
    EngineOptions().export()
    assert EngineOptions.from_env() == EngineOptions()


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
