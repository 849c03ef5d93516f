"""Scoring benchmark: the authors' loop vs selectit's engine, same model, same data, one run.

- baseline: the authors' loop re-created: one fp32 forward per sample × prompt, batch 1, full
  logits, the reference layout with the first 5 lines of their prompts file;
- (a) selectit exact mode: reference layout, fp32 (label positions only, batched by length);
- (b) selectit fast mode: shared-context layout (the `default` set, one packed forward per
  sample for all 5 prompts), bf16;
- (c) the vLLM engine, reference layout, fp32 (vLLM installed: `make venv-vllm`, run with
  `.venv-vllm/bin/python`; `--no-vllm` leaves it out);
- (d) the vLLM engine, shared-context layout, bf16, prefix caching on.

Both torch lines score through the model's own forward (`logits_to_keep` at the label positions).
Prints samples/s, the ratios to the baseline, max |Δp| of (a) and (c) against the baseline, and
the model-load seconds of each engine apart from the scoring time. On a CUDA device it also prints
the share of the GPU's bf16 peak that (b) and (d) reach (FLOPs ≈ 2 × params × tokens / time;
torch: unpadded tokens through the model; vLLM: prompt tokens, cached prefixes included, so an
effective figure).

Usage: python benchmarks/scoring.py [--samples 100] [--device cpu|cuda] [--model smollm2-135m] [--no-vllm]
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

from selectit import db, registry  # noqa: E402
from selectit.contract import RatingRequest, render  # noqa: E402
from selectit.scorer import load_scorer  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="smollm2-135m", help="a model source (alias, dir or .gguf)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 peak of the GPU if not known here")
    ap.add_argument("--no-vllm", action="store_true", help="leave out the vLLM engine lines")
    ap.add_argument("--vllm-args", default=None, metavar="JSON",
                    help='more vllm.LLM arguments, e.g. \'{"enforce_eager": true}\' (no graph compilation)')
    args = ap.parse_args()
    prompts_file = next(p for p in PROMPTS_CANDIDATES if p.is_file())
    with open(prompts_file, encoding="utf-8") as f:
        ref_templates = f.readlines()[:5]
    recs = json.loads(DEMO.read_text(encoding="utf-8"))[: args.samples]
    n = len(recs)

    tmp = tempfile.mkdtemp()
    engine = db.open_store(f"sqlite:///{tmp}/bench.db")
    with db.session_scope(engine) as s:
        m32 = registry.add_model(s, "bench", args.model, dtype="float32")
        m16 = registry.add_model(s, "bench", args.model, dtype="bfloat16")
    t0 = time.perf_counter()
    exact = load_scorer(m32, device=args.device, exact=True)
    fast = load_scorer(m16, device=args.device)
    load_torch = time.perf_counter() - t0
    ref_reqs = requests(recs, "reference", ref_templates)
    shared_reqs = requests(recs, "shared-context", list(registry.DEFAULT_TEMPLATES))
    labels = m32.label_ids["reference"][:5]

    # warm-up (one sample each), not timed
    baseline(exact.model, exact.tokenizer, ref_reqs[:1], labels, args.device)
    exact.score(ref_reqs[:1])
    fast.score(shared_reqs[:1])

    sync(args.device)
    t0 = time.perf_counter()
    base = baseline(exact.model, exact.tokenizer, ref_reqs, labels, args.device)
    sync(args.device)
    t_base = time.perf_counter() - t0

    t0 = time.perf_counter()
    cells_a = exact.score(ref_reqs)
    sync(args.device)
    t_a = time.perf_counter() - t0

    tokens_before = fast.tokens_run
    t0 = time.perf_counter()
    cells_b = fast.score(shared_reqs)
    sync(args.device)
    t_b = time.perf_counter() - t0
    tokens_b = fast.tokens_run - tokens_before

    vllm_lines = None if args.no_vllm else run_vllm(m32, m16, ref_reqs, shared_reqs, args.vllm_args)
    failed = [c for c in cells_a + cells_b if c.error]
    dp = max(abs(a - b) for c in cells_a if not c.error for a, b in zip(c.probs, base[(c.sample_id, c.prompt_id)]))
    dev_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"model {args.model} ({m32.n_params:,} parameters), {n} samples × 5 prompts, device {args.device} ({dev_name})")
    print(f"engines: {exact.engine_version}" + (f"; {vllm_lines[6]}" if vllm_lines else ""))
    print(f"baseline (authors' loop, fp32, batch 1, full logits): {n / t_base:8.2f} samples/s  ({t_base:.1f} s)")
    print(f"(a) selectit exact, reference layout, fp32:            {n / t_a:8.2f} samples/s  ({t_a:.1f} s)  "
          f"{t_base / t_a:.2f}× baseline, max |Δp| vs baseline {dp:.1e}")
    print(f"(b) selectit fast, shared-context layout, bf16:        {n / t_b:8.2f} samples/s  ({t_b:.1f} s)  "
          f"{t_base / t_b:.2f}× baseline, {fast.forwards - 1} forwards")
    if vllm_lines is not None:
        cells_c, t_c, cells_d, t_d, tokens_d, _, _ = vllm_lines
        failed += [c for c in cells_c + cells_d if c.error]
        dp_c = max(abs(a - b) for c in cells_c if not c.error
                   for a, b in zip(c.probs, base[(c.sample_id, c.prompt_id)]))
        print(f"(c) vLLM, reference layout, fp32:                      {n / t_c:8.2f} samples/s  ({t_c:.1f} s)  "
              f"{t_base / t_c:.2f}× baseline, max |Δp| vs baseline {dp_c:.1e}")
        print(f"(d) vLLM, shared-context layout, bf16, prefix cache:   {n / t_d:8.2f} samples/s  ({t_d:.1f} s)  "
              f"{t_base / t_d:.2f}× baseline, {t_b / t_d:.2f}× (b)")
    print(f"model load: torch engine {load_torch:.1f} s (fp32 + bf16)"
          + (f", vLLM engine {vllm_lines[5]:.1f} s (fp32 + bf16)" if vllm_lines else ""))
    print(f"failed cells: {len(failed)}")
    if args.device.startswith("cuda"):
        peak = args.peak_tflops * 1e12 if args.peak_tflops else next(
            (v for k, v in PEAKS.items() if k in dev_name), None)
        runs = [("(b)", tokens_b, t_b)] + ([("(d)", vllm_lines[4], vllm_lines[3])] if vllm_lines else [])
        for name, tokens, secs in runs:
            flops = 2 * m16.n_params * tokens / secs
            share = (f"{flops / peak:.1%} of the {peak / 1e12:.0f} TFLOP/s bf16 peak" if peak
                     else "peak unknown (--peak-tflops)")
            print(f"{name} reaches {flops / 1e12:.1f} TFLOP/s (2 × params × {tokens:,} tokens / time): {share}")


def run_vllm(m32, m16, ref_reqs: list[RatingRequest], shared_reqs: list[RatingRequest],
             vllm_args: str | None) -> tuple | None:
    """(c) and (d): cells and seconds of each, prompt tokens of (d), and the load seconds of both."""
    from selectit.engines import EngineOptions
    from selectit.vllm_engine import load_vllm_scorer

    try:
        import vllm  # noqa: F401
    except ImportError:
        print("(vLLM is not installed here: run with .venv-vllm/bin/python for the vLLM lines)")
        return None
    t0 = time.perf_counter()
    opts = EngineOptions(engine="vllm", vllm_args=vllm_args)
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


if __name__ == "__main__":
    main()
