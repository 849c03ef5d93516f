"""CPU ideas for fast mode in float32 (issue #29): each against plain float32, side by side in one run.

Every line scores the same requests (the first `--samples` demo records × the 5 default prompts,
shared-context layout) with the engine's packed forward (one row per sample under a 4-D mask, the
CPU default), from the same float32 weights:

- `float32`: the engine as it is, on all of torch's threads; timed first and again last (a shared
  machine drifts; the ratios are to the mean of the two);
- `1 thread`: torch.set_num_threads(1) (torch's inter-op pool is fixed once work has run and the
  forward uses none of it: its size is printed);
- `oneDNN off`: torch.backends.mkldnn.flags(enabled=False) around the pass;
- `oneDNN linears`: every linear layer but the `lm_head` through oneDNN's matmul
  (torch.ops.mkldnn._linear_pointwise) instead of ATen's (MKL's sgemm);
- `int8 MLP`: torch's dynamic int8 quantisation (one scale per output channel) of the MLP's
  linear layers only; attention and the `lm_head` stay float32;
- `compile`: torch.compile (inductor, dynamic shapes) of the model's forward, on the first
  `--compile-samples` only (each new batch shape compiles a graph, minutes on 2 cores), against
  eager float32 on the same samples: the first pass holds the compilation, the second pass is the
  steady state.

Each line prints wall and CPU seconds (all threads, plus child processes: inductor compiles in
workers), the ratio to float32 (>1: faster), and its agreement with float32 on the same cells: the
share of cells whose S_base (most likely rating) is the same, and Spearman ρ of S_sent (as
benchmarks/scoring.py). It also prints the CPU model, its SIMD flags, the kernel ISA that torch,
oneDNN and MKL report, and the load average at the start and the end.

An AVX2-only CPU can be emulated on a newer one: the ISA each library dispatches to is capped by

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2

(the printed "kernels" line shows whether it took effect).

Usage: python benchmarks/cpu_ideas.py [--samples 60] [--model smollm2-135m] [--ideas threads,onednn,...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from scoring import DEMO, agreement, requests  # noqa: E402 - the scoring benchmark's helpers

from selectit.scoring import registry  # noqa: E402
from selectit.scoring.torch_engine import Scorer, load_scorer  # noqa: E402
from selectit.store import db  # noqa: E402

IDEAS = ("threads", "onednn-off", "onednn-linear", "int8-mlp", "compile")
#: SIMD flags worth naming in the CPU line.
SIMD = ("avx", "avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
        "amx_tile", "amx_bf16", "amx_int8")
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_line() -> str:
    """The CPU model (/proc/cpuinfo) and its SIMD flags (`loading.cpu_features`, as the engine reads them)."""
    from selectit.scoring.loading import cpu_features

    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((v.strip() for k, _, v in (line.partition(":") for line in cpuinfo.splitlines())
                  if k.strip() == "model name"), "unknown")
    flags = cpu_features(cpuinfo)
    return f"CPU: {model}, {os.cpu_count()} CPUs; flags {' '.join(f for f in SIMD if f in flags)}"


def kernel_isa() -> str:
    """The ISA that torch's kernels, oneDNN and MKL dispatch to here (oneDNN's and MKL's from their
    verbose logs in a child process, which inherits this one's environment)."""
    probe = ("import torch; x = torch.randn(64, 64); torch.ops.mkldnn._linear_pointwise(x, x, None, 'none', [], '');"
             " x @ x")
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True).stdout
    onednn = next((p.split(":", 1)[1] for line in out.splitlines() if line.startswith("onednn_verbose")
                   for p in line.split(",") if p.startswith("isa:")), "?")
    # MKL names the ISA only on Intel CPUs ("... enabled processors"); elsewhere "Intel(R) Architecture processors"
    mkl = next((line.split(" architecture ", 1)[1].split(", Lnx")[0].strip() for line in out.splitlines()
                if line.startswith("MKL_VERBOSE") and " architecture " in line), "?")
    capped = ", ".join(f"{k}={os.environ[k]}" for k in ISA_ENV if k in os.environ) or "none"
    return (f"kernels: torch {torch.backends.cpu.get_cpu_capability()}; oneDNN {onednn}; MKL {mkl} "
            f"(ISA caps set: {capped})")


def cpu_seconds() -> float:
    """CPU seconds of this process's threads and its waited-for children (inductor's compile workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class OneDNNLinear(torch.nn.Module):
    """A linear layer through oneDNN's matmul, the same float32 weights."""

    def __init__(self, lin: torch.nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = lin.weight, lin.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def swap_linears(model: Any, make: Callable[[torch.nn.Linear], torch.nn.Module]) -> Any:
    """`model` with every linear layer but the `lm_head` replaced by `make(layer)`, in place."""
    head = model.get_output_embeddings()
    for name, mod in list(model.named_modules()):
        if isinstance(mod, torch.nn.Linear) and mod is not head:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, make(mod))
    return model


def int8_mlp(model: Any) -> tuple[Any, int]:
    """A copy of `model` whose MLP linear layers (names with `.mlp.`) are int8 (dynamic, per channel),
    and how many."""
    import copy
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = {n: per_channel_dynamic_qconfig for n, m in model.named_modules()
             if isinstance(m, torch.nn.Linear) and ".mlp." in n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(copy.deepcopy(model), names, dtype=torch.qint8), len(names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--model", default="smollm2-135m", help="a model source (alias, dir or .gguf)")
    ap.add_argument("--compile-samples", type=int, default=3, help="samples of the compile lines")
    ap.add_argument("--ideas", default=",".join(IDEAS), help=f"which to run, of {','.join(IDEAS)}")
    args = ap.parse_args()
    ideas = [i for i in args.ideas.split(",") if i]
    sys.stdout.reconfigure(line_buffering=True)  # a run cut short keeps the lines it printed
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    print(cpu_line())
    print(kernel_isa())
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}: {threads} threads, {torch.get_num_interop_threads()} inter-op threads")

    recs = json.loads(DEMO.read_text(encoding="utf-8"))[: args.samples]
    reqs = requests(recs, "shared-context", list(registry.DEFAULT_TEMPLATES))
    engine = db.open_store(f"sqlite:///{tempfile.mkdtemp()}/ideas.db")
    with db.session_scope(engine) as s:
        version = registry.add_model(s, "bench", args.model, dtype="float32")
    sc = load_scorer(version, device="cpu")
    assert sc.shared == "mask", "the CPU default packing is the 4-D mask"
    plain = sc.model
    sc.score(reqs[:1])  # warm-up, not timed

    def run(scorer: Scorer, name: str = "", which: list | None = None) -> tuple[list, float, float]:
        t0, c0 = time.perf_counter(), cpu_seconds()
        cells = scorer.score(reqs if which is None else which)
        secs, cpu_s = time.perf_counter() - t0, cpu_seconds() - c0
        if name:  # as it runs, so a run cut short keeps its lines; the table at the end has the ratios
            print(f"  ran {name}: {secs:.1f} s, cpu {cpu_s:.1f} s, load average "
                  f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        return cells, secs, cpu_s

    lines: list[tuple[str, list, float, float, str]] = []  # name, cells, wall, cpu, note
    compiled: list[tuple[str, list, float, float, str]] = []  # the same, for compile's few samples
    ref_cells, *first = run(sc, "float32 (first)")
    lines.append(("float32 (first)", ref_cells, *first, f"{threads} threads"))

    if "threads" in ideas:
        torch.set_num_threads(1)
        lines.append(("1 thread", *run(sc, "1 thread"), f"of {threads}"))
        torch.set_num_threads(threads)
    if "onednn-off" in ideas:
        with torch.backends.mkldnn.flags(enabled=False):
            lines.append(("oneDNN off", *run(sc, "oneDNN off"), "torch.backends.mkldnn disabled"))
    if "onednn-linear" in ideas:
        import copy

        sc.model = swap_linears(copy.deepcopy(plain), OneDNNLinear)
        sc.score(reqs[:1])
        lines.append(("oneDNN linears", *run(sc, "oneDNN linears"), "mkldnn._linear_pointwise, lm_head kept"))
        sc.model = plain
    if "int8-mlp" in ideas:
        sc.model, n = int8_mlp(plain)
        sc.score(reqs[:1])
        lines.append(("int8 MLP", *run(sc, "int8 MLP"), f"{n} MLP linears int8; attention, lm_head float32"))
        sc.model = plain
    if "compile" in ideas:
        from torch._dynamo.utils import counters

        # On its own few samples: every new batch shape compiles a graph (minutes each on 2 cores).
        sub = reqs[: args.compile_samples]
        compiled.append(("float32, eager", *run(sc, "float32 eager (compile's samples)", sub), "the reference here"))
        torch._dynamo.reset()
        counters.clear()
        sc.model = torch.compile(plain, dynamic=True)
        cells, secs, cpu_s = run(sc, "compile, 1st pass", sub)  # compiles a graph per new shape
        graphs, breaks = counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())
        compiled.append(("compile, 1st pass", cells, secs, cpu_s,
                         f"compile included: {graphs} graphs for {len(sub)} samples, {breaks} graph breaks"))
        cells, secs2, cpu2 = run(sc, "compile, 2nd pass", sub)
        compiled.append(("compile, 2nd pass", cells, secs2, cpu2,
                         f"steady state, {counters['stats']['unique_graphs'] - graphs} more graphs; "
                         f"compile ≈ {secs - secs2:.0f} s (1st − 2nd pass)"))
        sc.model = plain
    last = run(sc, "float32 (last)")
    lines.append(("float32 (last)", last[0], last[1], last[2], "the reference again"))

    wall32, cpu32 = (first[0] + last[1]) / 2, (first[1] + last[2]) / 2
    n = len(reqs)
    print(f"model {args.model}, {n} samples × 5 prompts, shared-context, packed rows (4-D mask); "
          f"ratio = float32 (mean of first and last: {wall32:.1f} s, cpu {cpu32:.1f} s) / line, >1 faster")
    for name, cells, secs, cpu_s, note in lines:
        failed = sum(1 for c in cells if c.error)
        print(f"{name + ':':<20} {n / secs:6.2f} samples/s ({secs:6.1f} s, cpu {cpu_s:6.1f} s)  "
              f"{wall32 / secs:.2f}× ({cpu32 / cpu_s:.2f}× cpu)  {failed} failed  [{note}]")
    for name, cells, *_ in lines[1:]:
        print(f"agreement of {name} with float32 (first): {agreement(cells, ref_cells)}")
    if compiled:
        _, ref_c, wall_c, cpu_c, _ = compiled[0]
        print(f"torch.compile (inductor, dynamic=True) on the first {args.compile_samples} samples; "
              f"ratio = float32 eager on them / line")
        for name, cells, secs, cpu_s, note in compiled:
            print(f"{name + ':':<20} {args.compile_samples / secs:6.2f} samples/s ({secs:6.1f} s, cpu {cpu_s:6.1f} s)  "
                  f"{wall_c / secs:.2f}× ({cpu_c / cpu_s:.2f}× cpu)  [{note}]")
        print(f"agreement of compile with float32 eager: {agreement(compiled[-1][1], ref_c)}")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
