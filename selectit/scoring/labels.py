"""Which token ids are the rating labels 1..9 after a given context (no torch, no ORM).

Used when a model is registered (per layout, see `contract.LABEL_CONTEXT`) and by a scoring
engine for a prompt whose tail is custom; both only need a Hugging Face-style tokenizer.
"""

from __future__ import annotations

from typing import Any

from selectit.errors import SelectitError

#: Labels are single digits: a scale K has the labels 1..K, K ≤ 9.
MAX_LABEL = 9


class LabelError(SelectitError):
    """A tokenizer that does not read a rating digit as one token of its own."""


def label_token_ids(tokenizer: Any, context: str, where: str = "") -> list[int]:
    """Token ids of the digits 1..9 right after `context`, as this tokenizer splits them there.

    The digit must be exactly one token of its own in that position (its characters shared with
    no other token); otherwise a `LabelError` says which label failed.
    """
    ids: list[int] = []
    for k in range(1, MAX_LABEL + 1):
        digit = str(k)
        text = context + digit
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        start = len(context)
        covering = [(tid, (a, b)) for tid, (a, b) in zip(enc["input_ids"], enc["offset_mapping"])
                    if a < start + 1 and b > start]
        if len(covering) != 1 or covering[0][1] != (start, start + 1):
            raise LabelError(
                f"{where}the label {digit!r} is not a single token after {context!r} "
                f"(tokens {[tokenizer.convert_ids_to_tokens(t) for t, _ in covering]}); "
                f"selectit reads each rating 1..{MAX_LABEL} as one token, so this model cannot be used"
            )
        ids.append(int(covering[0][0]))
    return ids
