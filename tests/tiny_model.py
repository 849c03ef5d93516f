"""A tiny random causal LM with a real fast tokenizer, built on disk in a few seconds (no download).

`build_tiny_model(path)` trains a byte-level BPE tokenizer (digits split one per token, like
SmolLM2's) on a few hundred demo records, wraps it in `PreTrainedTokenizerFast` with a BOS token,
and saves it next to a 2-layer Llama (`save_pretrained`), so `selectit model add NAME --source DIR`
treats it like any local Hugging Face model directory.

The weights are drawn with a large init scale so next-token distributions are sharp and differ
between prompts: a wrong attention mask then changes the probabilities by far more than the
1e-4 the packing tests allow.
"""

from __future__ import annotations

import json
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "selectit" / "data" / "alpaca_en_demo.json"


def _corpus(n: int = 300) -> list[str]:
    records = json.loads(DEMO.read_text(encoding="utf-8"))[:n]
    texts = [f"{r['instruction']}\n{r.get('input', '')}\n{r['output']}" for r in records]
    texts.append("Rating: 1 2 3 4 5 6 7 8 9\nThe answer is: \n")
    return texts


def build_tokenizer(split_digit: str | None = None, vocab_size: int = 600):
    """A fast BPE tokenizer; `split_digit="7"` makes that digit two tokens (to test refusal)."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    if split_digit is not None:
        # The digit is rewritten to two characters, so it can never be a single token.
        tok.normalizer = normalizers.Replace(split_digit, split_digit + "\u00a7")
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_tiny_model(path: str | Path, *, split_digit: str | None = None, seed: int = 0,
                     max_position_embeddings: int = 1024, arch: str = "llama", sliding_window: int = 32) -> Path:
    """Save a tiny causal LM + tokenizer under `path`; returns the directory.

    `arch="gemma3"` builds a tiny Gemma-3 text model whose layers alternate sliding-window
    (`sliding_window` tokens) and full attention, to test packing on prompts longer than the window.
    """
    import torch
    from transformers import (
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(split_digit)
    if arch == "gemma3":
        config = Gemma3TextConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
            max_position_embeddings=max_position_embeddings, sliding_window=sliding_window,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"], initializer_range=0.5,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(seed)
        model = Gemma3ForCausalLM(config)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        return path
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_position_embeddings,
        initializer_range=0.5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


if __name__ == "__main__":  # pragma: no cover - manual use: python tests/tiny_model.py DIR
    import sys

    print(build_tiny_model(sys.argv[1]))

