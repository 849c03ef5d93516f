"""A rater with a real model's shape and random weights, for timing scoring where the weights cannot be had.

Speed and MFU depend on a model's shape (layers, widths, vocabulary, sequence lengths), not on
its weights; so a GPU machine without network can still time `benchmarks/scoring.py` on the
shape of the paper's raters. The probabilities such a model gives are meaningless as ratings,
but the benchmark's |Δp| against the authors' loop still checks that the engine computes them
exactly. Writes a Hugging Face model directory (config, safetensors weights, the tokenizer of an
existing model directory) that `selectit model add NAME --source DIR` and the benchmark load.

Usage:
    python benchmarks/random_rater.py OUT --tokenizer DIR [--shape same|llama2-7b|llama2-13b] [--device cuda]

`--shape same` takes DIR's own config (e.g. SmolLM2-135M from selectit's model cache); the
LLaMA-2 shapes are those of the paper's 7B and 13B raters, with DIR's vocabulary.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

#: The paper's LLaMA-2 raters (their config.json), with the vocabulary left to the tokenizer.
SHAPES = {
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, head_dim=128),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, head_dim=128),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer", type=Path, required=True, help="a model directory with a tokenizer and config")
    ap.add_argument("--shape", default="same", choices=["same", *SHAPES])
    ap.add_argument("--device", default="cpu", help="where to draw the weights (cuda: seconds for 7B)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    base = json.loads((args.tokenizer / "config.json").read_text(encoding="utf-8"))
    overrides = SHAPES.get(args.shape, {})
    fields = {k: v for k, v in base.items() if not k.startswith("_") and k not in ("model_type", "dtype")}
    if args.shape != "same":  # LLaMA-2 has its own output matrix
        fields.update(overrides, tie_word_embeddings=False)
    config = AutoConfig.for_model("llama", **fields)
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    for name in TOKENIZER_FILES:
        if (args.tokenizer / name).is_file():
            shutil.copy(args.tokenizer / name, args.out / name)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {args.shape} shape, {n:,} parameters, random bf16 weights (seed {args.seed})")


if __name__ == "__main__":
    main()
