"""Scoring benchmark: the authors' loop vs selectit's engine, same model, same data, one run.

- baseline: the authors' loop re-created: one fp32 forward per sample × prompt, batch 1, full
  logits, the reference layout with the first 5 lines of their prompts file;
- (a) selectit exact mode: reference layout, fp32 (label positions only, batched by length);
- (b) selectit fast mode: shared-context layout (the `default` set: each sample's shared context
  run once, then its 5 rating questions on that context's KV cache), in float32, in bf16 (where
  the CPU has native bf16, or on a GPU; `--bf16` forces it) and in int8 (CPU: linear layers
  quantised); plus float32 with the older packing (one row per sample under a 4-D mask), for the
  choice between the two;
- the agreement of fast int8 (and bf16) with fast float32 on the same cells: Spearman ρ of S_sent
  (paper formula, α = 0.2), the share of cells with the same S_base, max |ΔS_token|;
- the whole command: `selectit score -v` in a fresh process on `--command-samples` demo samples
  (default 60), dtype as this CPU's default would be without bf16 (`--command-dtype`), its wall
  time against the authors' loop's time for as many samples (its rate in this run), and the
  command's own time breakdown;
- (c) the vLLM engine, reference layout, fp32 (vLLM installed: `make venv-vllm`, run with
  `.venv-vllm/bin/python`; `--no-vllm` leaves it out);
- (d) the vLLM engine, shared-context layout, bf16, prefix caching on;
- (e) the `openai` engine against a local `vllm serve` of the same model in fp32 (started here, eager,
  a bounded KV cache), reference layout, exact mode both ways: `logprob_token_ids` (one request per
  cell) and `echo` (K requests per cell), with the requests each sent (vLLM installed; `--no-vllm`
  leaves it out; `--only-openai` runs just the baseline and these lines).

Both torch lines score through the model's own forward (`logits_to_keep` at the label positions).
Prints samples/s, the ratios to the baseline, max |Δp| of (a) and (c) against the baseline, and
the model-load seconds of each engine apart from the scoring time. On a CUDA device it also prints
the share of the GPU's bf16 peak that (b) and (d) reach (FLOPs ≈ 2 × params × tokens / time;
torch: unpadded tokens through the model; vLLM: prompt tokens, cached prefixes included, so an
effective figure).

The machine's load average is printed at the start and at the end (a shared machine slows every line).

Usage: python benchmarks/scoring.py [--samples 100] [--device cpu|cuda] [--model smollm2-135m] [--no-vllm]
       [--command-samples 60] [--command-dtype int8] [--bf16] [--only-openai]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from selectit.contract import RatingRequest, render  # noqa: E402
from selectit.scoring import registry
from selectit.scoring.torch_engine import load_scorer  # noqa: E402
from selectit.store import db  # noqa: E402

DEMO = ROOT / "selectit" / "data" / "alpaca_en_demo.json"
#: The authors' rating prompts (`data/rating_prompt.txt` of Blue-Raincoat/SelectIT, commit 4813250), which
#: selectit does not ship: $SELECTIT_REFERENCE_PROMPTS, else the copy in a data folder beside or inside the checkout.
PROMPTS_CANDIDATES = [Path(p) for p in [os.environ.get("SELECTIT_REFERENCE_PROMPTS")] if p] + [
    base / "shared" / "data" / "reference_rating_prompts.txt" for base in (ROOT.parent, ROOT)]
#: Dense bf16 tensor-core peaks (FLOP/s) by device name, from the vendors' data sheets.
PEAKS = {"H200": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12,
         "L40S": 362e12, "L4": 121e12}


def requests(recs: list[dict], layout: str, templates: list[str]) -> list[RatingRequest]:
    return [RatingRequest(i, tuple(range(len(templates))),
                          tuple(render(layout, t, r["instruction"], r.get("input", ""), r["output"])
                                for t in templates), 5) for i, r in enumerate(recs)]


@torch.inference_mode()
def baseline(model, tokenizer, reqs: list[RatingRequest], labels: list[int], device: str) -> dict:
    """The authors' loop: batch 1, full logits, softmax at the last position."""
    out = {}
    for r in reqs:
        for pid, p in zip(r.prompt_ids, r.prompts):
            ids = tokenizer(p.text, return_tensors="pt").input_ids.to(device)
            logits = model(ids).logits  # (1, T, V): full logits, as the reference code
            out[(r.sample_id, pid)] = logits[0, -1].float().softmax(-1)[labels].tolist()
    return out


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's ρ (average ranks for ties)."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    var = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return cov / var if var else float("nan")


def agreement(cells: list, reference: list) -> str:
    """Spearman ρ of S_sent, share of cells with the same S_base, max |ΔS_token| against `reference`."""
    from statistics import fmean, pstdev

    from selectit.contract import DEFAULT_ALPHA
    from selectit.formulas import token_score

    def scores(cs: list) -> dict:
        return {(c.sample_id, c.prompt_id): token_score(c.probs) for c in cs if not c.error}

    a, b = scores(cells), scores(reference)
    keys = sorted(a.keys() & b.keys())
    same = sum(a[k][0] == b[k][0] for k in keys) / max(len(keys), 1)
    dtok = max((abs(a[k][1] - b[k][1]) for k in keys), default=float("nan"))

    def sent(sc: dict) -> list[float]:
        out = []
        for sid in sorted({k[0] for k in keys}):
            tok = [sc[k][1] for k in keys if k[0] == sid]
            out.append(fmean(tok) / (1 + DEFAULT_ALPHA * pstdev(tok)))
        return out

    rho = spearman(sent(a), sent(b))
    return f"Spearman ρ of S_sent {rho:.3f}, same S_base {same:.1%} of {len(keys)} cells, max |ΔS_token| {dtok:.3f}"


def whole_command(model: str, samples: int, dtype: str) -> tuple[float, float, str]:
    """Wall and CPU seconds of `selectit score -v` in a fresh process on the first `samples` demo
    records (fresh database; the model's de-quantised cache already built), and its output."""
    import os
    import resource
    import subprocess

    tmp = Path(tempfile.mkdtemp())
    data = tmp / "demo.json"
    data.write_text(json.dumps(json.loads(DEMO.read_text(encoding="utf-8"))[:samples]), encoding="utf-8")
    base = [sys.executable, "-m", "selectit", "--db", f"sqlite:///{tmp}/cmd.db"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for args in (["ingest", str(data), "--dataset", "demo"], ["model", "add", "rater", "--source", model,
                                                               "--dtype", dtype]):
        subprocess.run(base + args, check=True, env=env, capture_output=True)
    def children_cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    t0, c0 = time.perf_counter(), children_cpu()
    out = subprocess.run(base + ["score", "-v", "-q"], check=True, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, children_cpu() - c0, out.stdout


def main() -> None:
    from selectit.scoring import loading

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="smollm2-135m", help="a model source (alias, dir or .gguf)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak of the GPU if not known here")
    ap.add_argument("--no-vllm", action="store_true", help="leave out the vLLM engine lines")
    ap.add_argument("--vllm-args", default=None, metavar="JSON",
                    help='more vllm.LLM arguments, e.g. \'{"enforce_eager": true}\' (no graph compilation)')
    ap.add_argument("--bf16", action="store_true", help="run fast bf16 even on a CPU without native bf16")
    ap.add_argument("--command-samples", type=int, default=60, help="samples of the whole-command run (0: none)")
    ap.add_argument("--command-dtype", default=None,
                    help="dtype of the whole-command run [this CPU's default if it had no bf16]")
    ap.add_argument("--only-openai", action="store_true",
                    help="only the baseline and the openai engine's lines against `vllm serve`")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # a run cut short keeps the lines it printed
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    cpu = not args.device.startswith("cuda")
    features = loading.cpu_features()
    no_bf16_default = loading.default_dtype(features - loading.BF16_FLAGS, cuda=False)
    prompts_file = next(p for p in PROMPTS_CANDIDATES if p.is_file())
    with open(prompts_file, encoding="utf-8") as f:
        ref_templates = f.readlines()[:5]
    recs = json.loads(DEMO.read_text(encoding="utf-8"))[: args.samples]
    n = len(recs)

    tmp = tempfile.mkdtemp()
    engine = db.open_store(f"sqlite:///{tmp}/bench.db")
    dtypes = ["float32"] + (["bfloat16"] if (not cpu or args.bf16 or features & loading.BF16_FLAGS) else []) \
        + (["int8"] if cpu else [])
    if args.only_openai:
        dtypes = ["float32"]
    with db.session_scope(engine) as s:
        versions = {d: registry.add_model(s, "bench", args.model, dtype=d) for d in dtypes}
    m32 = versions["float32"]
    t0 = time.perf_counter()
    exact = load_scorer(m32, device=args.device, exact=True)
    load_torch = time.perf_counter() - t0
    fast = {d: load_scorer(v, device=args.device) for d, v in versions.items()}
    ref_reqs = requests(recs, "reference", ref_templates)
    shared_reqs = requests(recs, "shared-context", list(registry.DEFAULT_TEMPLATES))
    labels = m32.label_ids["reference"][:5]

    # warm-up (one sample each), not timed
    baseline(exact.model, exact.tokenizer, ref_reqs[:1], labels, args.device)
    exact.score(ref_reqs[:1])
    for sc in fast.values():
        sc.score(shared_reqs[:1])

    sync(args.device)
    t0, c0 = time.perf_counter(), time.process_time()
    base = baseline(exact.model, exact.tokenizer, ref_reqs, labels, args.device)
    sync(args.device)
    t_base, c_base = time.perf_counter() - t0, time.process_time() - c0
    if args.only_openai:
        print(f"model {args.model} ({m32.n_params:,} parameters), {n} samples × 5 prompts, device {args.device}")
        print(f"baseline (authors' loop, fp32, batch 1, full logits): {n / t_base:8.2f} samples/s  ({t_base:.1f} s, "
              f"cpu {c_base:.1f} s)")
        run_openai(m32, exact.tokenizer, ref_reqs, base, t_base)
        print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        return

    t0, c0 = time.perf_counter(), time.process_time()
    cells_a = exact.score(ref_reqs)
    sync(args.device)
    t_a, c_a = time.perf_counter() - t0, time.process_time() - c0

    runs = {}  # name → (cells, seconds, tokens, forwards)
    # Each dtype with the engine's own choice for this device; float32 also with the other packing.
    default_packing = fast["float32"].shared
    other = "cache" if default_packing == "mask" else "mask"
    packing = {"mask": "4-D mask", "cache": "KV cache"}
    plan = [(f"fast {d}", fast[d], default_packing) for d in dtypes]
    plan += [(f"fast float32, {packing[other]}", fast["float32"], other)]
    for name, sc, shared in plan:
        sc.shared = shared
        tokens, forwards = sc.tokens_run, sc.forwards
        t0, c0 = time.perf_counter(), time.process_time()
        cells = sc.score(shared_reqs)
        sync(args.device)
        runs[name] = (cells, time.perf_counter() - t0, sc.tokens_run - tokens, sc.forwards - forwards,
                      time.process_time() - c0)
        sc.shared = default_packing

    vllm_lines = None if args.no_vllm else run_vllm(m32, versions.get("bfloat16", m32), ref_reqs, shared_reqs,
                                                     args.vllm_args)
    failed = [c for c in cells_a if c.error] + [c for r in runs.values() for c in r[0] if c.error]
    dp = max(abs(a - b) for c in cells_a if not c.error for a, b in zip(c.probs, base[(c.sample_id, c.prompt_id)]))
    dev_name = torch.cuda.get_device_name() if not cpu else "CPU"
    print(f"model {args.model} ({m32.n_params:,} parameters), {n} samples × 5 prompts, device {args.device} ({dev_name})")
    if cpu:
        shown = sorted(features & (loading.BF16_FLAGS | loading.INT8_FLAGS | {"amx_tile"}))
        print(f"CPU: {torch.get_num_threads()} threads, features {' '.join(shown) or 'none of bf16/int8'}; "
              f"torch capability {torch.backends.cpu.get_cpu_capability()}; without bf16 the default would be "
              f"{no_bf16_default}")
    print(f"engines: {exact.engine_version}" + (f"; {vllm_lines[6]}" if vllm_lines else ""))
    print("wall seconds, and CPU seconds of all threads (on a shared machine the CPU ratio is the steadier one)")
    print(f"baseline (authors' loop, fp32, batch 1, full logits): {n / t_base:8.2f} samples/s  ({t_base:.1f} s, "
          f"cpu {c_base:.1f} s)")
    print(f"(a) selectit exact, reference layout, fp32:            {n / t_a:8.2f} samples/s  ({t_a:.1f} s, "
          f"cpu {c_a:.1f} s)  {t_base / t_a:.2f}× baseline ({c_base / c_a:.2f}× cpu), max |Δp| vs baseline {dp:.1e}")
    print(f"(b) packed rows: {packing[default_packing]} (this device's default), {packing[other]} for comparison")
    for name, (cells, secs, _, fw, cpu_s) in runs.items():
        print(f"(b) selectit {name + ', shared-context:':<37} {n / secs:8.2f} samples/s  ({secs:.1f} s, "
              f"cpu {cpu_s:.1f} s)  {t_base / secs:.2f}× baseline ({c_base / cpu_s:.2f}× cpu), {fw} forwards")
    ref32 = runs["fast float32"][0]
    for name in runs:
        if name != "fast float32":
            print(f"agreement of {name} with fast float32: {agreement(runs[name][0], ref32)}")
    if vllm_lines is not None:
        cells_c, t_c, cells_d, t_d, tokens_d, _, _ = vllm_lines
        failed += [c for c in cells_c + cells_d if c.error]
        dp_c = max(abs(a - b) for c in cells_c if not c.error
                   for a, b in zip(c.probs, base[(c.sample_id, c.prompt_id)]))
        print(f"(c) vLLM, reference layout, fp32:                      {n / t_c:8.2f} samples/s  ({t_c:.1f} s)  "
              f"{t_base / t_c:.2f}× baseline, max |Δp| vs baseline {dp_c:.1e}")
        print(f"(d) vLLM, shared-context layout, bf16, prefix cache:   {n / t_d:8.2f} samples/s  ({t_d:.1f} s)  "
              f"{t_base / t_d:.2f}× baseline")
    if not args.no_vllm:
        run_openai(m32, exact.tokenizer, ref_reqs, base, t_base)
    print(f"model load: torch engine {load_torch:.1f} s (fp32)"
          + (f", vLLM engine {vllm_lines[5]:.1f} s (fp32 + bf16)" if vllm_lines else ""))
    print(f"failed cells: {len(failed)}")
    if not cpu:
        peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
            (v for k, v in PEAKS.items() if k in dev_name), None)
        lines = [(f"(b) {k}", r[2], r[1]) for k, r in runs.items()]
        lines += [("(d)", vllm_lines[4], vllm_lines[3])] if vllm_lines else []
        for name, tokens, secs in lines:
            flops = 2 * m32.n_params * tokens / secs
            share = (f"{flops / peak:.1%} of the {peak / 1e12:.0f} TFLOP/s bf16 peak" if peak
                     else "peak unknown (--peak-tflops)")
            print(f"{name} reaches {flops / 1e12:.1f} TFLOP/s (2 × params × {tokens:,} tokens / time): {share}")
    if args.command_samples and cpu:
        del exact, fast
        dtype = args.command_dtype or no_bf16_default
        secs, cpu_s, out = whole_command(args.model, args.command_samples, dtype)
        loop, loop_cpu = t_base / n * args.command_samples, c_base / n * args.command_samples
        print(f"whole command: `selectit score -v` ({dtype}) on {args.command_samples} samples in a fresh process: "
              f"{secs:.1f} s (cpu {cpu_s:.1f} s); the authors' loop at this run's rate: {loop:.1f} s "
              f"(cpu {loop_cpu:.1f} s); ratio {loop / secs:.2f}× ({loop_cpu / cpu_s:.2f}× cpu)")
        print("\n".join("    " + line for line in out.splitlines() if line.strip()))
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def run_vllm(m32, m16, ref_reqs: list[RatingRequest], shared_reqs: list[RatingRequest],
             vllm_args: str | None) -> tuple | None:
    """(c) and (d): cells and seconds of each, prompt tokens of (d), and the load seconds of both."""
    from selectit.scoring.engines import EngineOptions
    from selectit.scoring.vllm_engine import load_vllm_scorer

    try:
        import vllm  # noqa: F401
    except ImportError:
        print("(vLLM is not installed here: run with .venv-vllm/bin/python for the vLLM lines)")
        return None
    t0 = time.perf_counter()
    opts = EngineOptions.of(engine="vllm", vllm_args=vllm_args).vllm
    v32 = load_vllm_scorer(m32, opts)
    load = time.perf_counter() - t0
    v32.score(ref_reqs[:1])  # warm-up, not timed
    t0 = time.perf_counter()
    cells_c = v32.score(ref_reqs)
    t_c = time.perf_counter() - t0
    v32.close()  # one engine at a time: free its memory
    del v32
    t0 = time.perf_counter()
    v16 = load_vllm_scorer(m16, opts)
    load += time.perf_counter() - t0
    v16.score(shared_reqs[:1])
    t0 = time.perf_counter()
    cells_d = v16.score(shared_reqs)
    t_d = time.perf_counter() - t0
    tokens_d = sum(c.n_tokens for c in cells_d)
    version = v16.engine_version
    v16.close()
    return cells_c, t_c, cells_d, t_d, tokens_d, load, version


def run_openai(m32, tokenizer, ref_reqs: list[RatingRequest], base: dict, t_base: float) -> None:
    """(e): `vllm serve` of the fp32 model on loopback, scored through the openai engine, exact mode
    by `logprob_token_ids` and by `echo`; prints one line each (and the server's start time)."""
    import socket
    import subprocess

    import httpx

    from selectit.scoring import loading
    from selectit.scoring.openai_engine import ECHO, TOKEN_IDS, Endpoint, EndpointClient, OpenAIScorer

    try:
        import vllm  # noqa: F401
    except ImportError:
        print("(vLLM is not installed here: run with .venv-vllm/bin/python for the openai engine's lines)")
        return
    src = loading.resolve_source(m32.source)
    path = loading.model_dir(src, m32.fingerprint if src.is_gguf else None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)  # noqa: SIM115 - closed below
    t0 = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--served-model-name",
         "bench", "--dtype", "float32", "--max-model-len", "4096", "--kv-cache-memory-bytes", str(2 << 30),
         "--enforce-eager", "--host", "127.0.0.1", "--port", str(port), "--seed", "0"],
        stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                print(f"(vllm serve exited: see {log.name})")
                return
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(2)
        t_start = time.perf_counter() - t0
        n = len(ref_reqs)
        for method, what in ((TOKEN_IDS, "1 request per cell"), (ECHO, "K = 5 requests per cell")):
            client = EndpointClient(Endpoint(f"{url}/v1", "bench"), concurrency=32, timeout=600)
            sc = OpenAIScorer(client, tokenizer, model_id=m32.id, max_tokens=m32.max_tokens,
                              label_ids=dict(m32.label_ids), method=method)
            sc.score(ref_reqs[:1])  # warm-up and the prompt form's probe, not timed
            requests_before = client.requests
            t0 = time.perf_counter()
            cells = sc.score(ref_reqs)
            secs = time.perf_counter() - t0
            failed = sum(1 for c in cells if c.error)
            dp = max((abs(a - b) for c in cells if not c.error
                      for a, b in zip(c.probs, base[(c.sample_id, c.prompt_id)])), default=float("nan"))
            print(f"(e) openai engine → vllm serve, reference, fp32, {method + ':':<18} {n / secs:8.2f} samples/s  "
                  f"({secs:.1f} s)  {t_base / secs:.2f}× baseline, max |Δp| vs baseline {dp:.1e}, "
                  f"{client.requests - requests_before} requests ({what}), {failed} failed")
        print(f"vllm serve (fp32, eager) started in {t_start:.1f} s")
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


if __name__ == "__main__":
    main()
