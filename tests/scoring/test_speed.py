"""Fast-mode choices: the dtype by CPU features, int8 weights, the token budget, the GGUF hash
memo, and `selectit score -v`'s time breakdown."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner
from test_torch_engine import records, requests

from selectit.cli import main
from selectit.scoring import loading, registry
from selectit.scoring.torch_engine import (
    CPU_MAX_BATCH_TOKENS,
    load_scorer,
    token_budget,
)
from selectit.store import db

XEON_NO_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\nbogomips\t: 4000\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd asimddp\n"


def test_cpu_features_read_x86_and_arm_cpuinfo():
    assert loading.cpu_features(XEON_NO_BF16) == {"fpu", "sse2", "avx2", "avx512f", "avx512_vnni"}
    assert loading.cpu_features(ARM) == {"fp", "asimd", "asimddp"}
    assert loading.cpu_features("processor\t: 0\n") == frozenset()


@pytest.mark.parametrize("flags,cuda,expected", [
    ({"avx512f", "avx512_vnni"}, False, "int8"),  # int8 dot products, no bf16
    ({"amx_int8", "amx_tile"}, False, "int8"),
    ({"asimd", "asimddp"}, False, "int8"),  # Arm dot product
    ({"avx512_vnni", "avx512_bf16"}, False, "bfloat16"),  # native bf16 wins
    ({"amx_bf16", "amx_int8"}, False, "bfloat16"),
    ({"avx2", "fma"}, False, "float32"),  # neither
    (set(), False, "float32"),
    ({"avx2"}, True, "bfloat16"),  # a GPU
])
def test_default_dtype_by_cpu_features(flags, cuda, expected):
    assert loading.default_dtype(frozenset(flags), cuda=cuda, int8=True) == expected
    # int8 off by default (its agreement with float32 on the demo was poor): float32 in its place
    plain = "float32" if expected == "int8" else expected
    assert loading.default_dtype(frozenset(flags), cuda=cuda, int8=False) == plain


def test_half_precision_warning_only_on_a_cpu_without_bf16():
    no_bf16 = loading.cpu_features(XEON_NO_BF16)
    line = loading.half_precision_warning("bfloat16", no_bf16, cuda=False)
    assert line is not None and "\n" not in line
    assert line.startswith("Warning: this CPU has no native bf16") and "× the time of float32" in line
    assert f"--dtype {loading.default_dtype(no_bf16, cuda=False)}" in line  # what this CPU's default is
    assert loading.half_precision_warning("bfloat16", no_bf16 | {"avx512_bf16"}, cuda=False) is None
    assert loading.half_precision_warning("bfloat16", no_bf16, cuda=True) is None
    assert loading.half_precision_warning("float32", no_bf16, cuda=False) is None
    assert loading.half_precision_warning("int8", no_bf16, cuda=False) is None


def test_model_add_with_int8_warns_that_its_ratings_are_approximate(tiny_model_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    out = CliRunner().invoke(main, ["--db", url, "model", "add", "tiny8", "--source",
                                                    str(tiny_model_dir), "--dtype", "int8"])
    assert out.exit_code == 0, out.output
    assert out.stderr.startswith("Warning: int8 ratings are approximate") and out.stderr.count("\n") == 1
    assert loading.approximation_warning("float32") is None and loading.approximation_warning("bfloat16") is None


def test_token_budget_follows_free_memory():
    smol = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                           num_attention_heads=9, num_key_value_heads=3)
    # per token (fp32): KV 2×30×3×64×4 = 46,080 bytes × 6, activations 2×(4×576 + 3×1536)×4 = 55,296
    per_token = 6 * 46_080 + 55_296
    assert token_budget(smol, 4, 10 * per_token * 1000, "cuda") == 5000
    assert token_budget(smol, 4, 1 << 20, "cuda") == 256  # never below 256 tokens
    assert token_budget(smol, 4, 64 << 30, "cpu") == CPU_MAX_BATCH_TOKENS
    assert token_budget(smol, 4, 100 * per_token, "cpu") == 256
    assert token_budget(smol, 2, 10 * per_token * 1000, "cuda") == 10000  # bf16: half the bytes


@pytest.fixture(scope="module")
def tiny_versions(tmp_path_factory, tiny_model_dir):
    engine = db.open_store(f"sqlite:///{tmp_path_factory.mktemp('db') / 's.db'}")
    with db.session_scope(engine) as s:
        fp32 = registry.add_model(s, "tiny", str(tiny_model_dir), dtype="float32")
        int8 = registry.add_model(s, "tiny", str(tiny_model_dir), dtype="int8")
    engine.dispose()
    return fp32, int8


def test_int8_quantises_the_linear_layers_but_not_the_head(tiny_versions):
    fp32, int8 = tiny_versions
    assert (int8.dtype, fp32.dtype) == ("int8", "float32") and int8.id != fp32.id  # a model version of its own
    scorer = load_scorer(int8, device="cpu")
    modules = dict(scorer.model.named_modules())
    quantised = torch.ao.nn.quantized.dynamic.Linear
    assert isinstance(modules["model.layers.0.self_attn.q_proj"], quantised)
    assert isinstance(modules["model.layers.1.mlp.down_proj"], quantised)
    assert type(modules["lm_head"]) is torch.nn.Linear and modules["lm_head"].weight.dtype == torch.float32
    assert modules["model.norm"].weight.dtype == torch.float32
    # it scores: every cell a distribution over the labels, near float32's
    reqs = requests(records(2, 5), "shared-context")
    cells8 = {(c.sample_id, c.prompt_id): c for c in scorer.score(reqs)}
    cells32 = {(c.sample_id, c.prompt_id): c for c in load_scorer(fp32, device="cpu").score(reqs)}
    assert all(c.error is None for c in cells8.values()) and len(cells8) == 10
    dp = max(abs(a - b) for k, c in cells8.items() for a, b in zip(c.probs, cells32[k].probs))
    assert 0 < dp < 0.5  # quantised: not the same numbers, but not unrelated ones


def test_int8_refuses_a_gpu_with_a_clear_error(tiny_versions):
    _, int8 = tiny_versions
    src = loading.resolve_source(int8.source)
    with pytest.raises(loading.ModelSourceError, match="int8 dtype runs on CPUs only"):
        loading.load_hf_model(src, "int8", "cuda")


def test_gguf_hash_is_remembered_by_file_version(tmp_path, monkeypatch):
    monkeypatch.setenv(loading.CACHE_ENV, str(tmp_path / "cache"))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 100)
    src = loading.Source("gguf", gguf, str(gguf))
    first = loading._gguf_sha(src)
    assert first == loading.sha256_file(gguf)
    loading._SHA_MEMO.clear()
    memo = json.loads((tmp_path / "cache" / "sha256.json").read_text())
    assert list(memo.values()) == [first]  # a new process reads it instead of hashing the file
    gguf.write_bytes(b"GGUF" + b"\1" * 100)  # new contents: new size or mtime, hashed again
    os.utime(gguf, ns=(1, 1))
    assert loading._gguf_sha(src) == loading.sha256_file(gguf) != first


def test_score_verbose_prints_where_the_time_went(tmp_path, tiny_model_dir):
    url = f"sqlite:///{tmp_path / 's.db'}"
    data = tmp_path / "d.json"
    data.write_text(json.dumps(records(3)), encoding="utf-8")
    env = {**os.environ, loading.CACHE_ENV: str(tmp_path / "cache")}

    def selectit(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "selectit", "--db", url, *args], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        return out.stdout

    selectit("ingest", str(data), "--dataset", "d")
    selectit("model", "add", "tiny", "--source", str(tiny_model_dir), "--dtype", "float32")
    out = selectit("score", "-v", "-q")
    assert "scored 15 cells, failed 0" in out
    lines = out.splitlines()
    total = next(line for line in lines if line.startswith("time: "))
    phases = {m.group(1): float(m.group(2)) for line in lines[lines.index(total) + 1:]
              if (m := re.match(r"\s+(\S.*?)\s{2,}([\d.]+) s", line))}
    for name in ("start-up and imports", "store", "planning", "model load", "torch + transformers imports",
                 "GGUF cache lookup", "tokenizer", "weights", "scoring", "DB reads", "DB writes", "other"):
        assert name in phases, out
    seconds = phases
    tops = ["start-up and imports", "store", "planning", "model load", "scoring", "DB reads", "DB writes", "other"]
    assert sum(seconds[n] for n in tops) == pytest.approx(float(total.split()[1]), abs=0.05)
    assert seconds["model load"] >= seconds["weights"] > 0 and seconds["scoring"] > 0
