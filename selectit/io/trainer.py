"""Converted exports as trainers read them: which records fit, which were reshaped, which are left out.

LLaMA-Factory's converter skips a conversation whose roles do not start with the user and
alternate (``Invalid role tag``, ``Skipping this abnormal example``), and TRL's chat templates
refuse one. A converted export (``sharegpt``, ``messages``, ``hf-dataset``, the alpaca formats)
therefore writes each record's `selectit.io.records.trainer_turns`: the `RESHAPES` applied, and a
record with no such turns left out, all of them named in one warning line and in the card
(`Fit`). The alpaca formats never leave a record out: one that does not fit their columns is
written from its stored text (the transcript in the instruction), as before.

`conversation` reads an export item's kept original back as the conversation it was at ingest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from selectit.io.records import RESHAPES, BadRecord, Conversation, parse, shape_of, trainer_turns

if TYPE_CHECKING:
    from selectit.io.export_files import Item

#: The converted formats whose records are turns (a record without trainer turns is left out).
TURN_FORMATS = ("sharegpt", "messages", "hf-dataset")
#: The converted formats (the alpaca ones write a record that does not fit from its stored text).
CONVERTED = (*TURN_FORMATS, "alpaca-json", "jsonl", "parquet")
#: How many left-out records the warning line names (the card names them all).
LIST_LEFT_OUT = 20


def conversation(item: Item) -> Conversation:
    """The item as a conversation: its original read as it was at ingest (the shape and column map
    of its file), else its stored text as one exchange."""
    obj = _original_object(item)
    if obj is not None:
        cmap = item.source.column_map if item.source is not None else {}
        layout = item.source.layout if item.source is not None else {}
        shape = layout.get("shape") or ("alpaca" if cmap else shape_of(obj))
        if shape is not None:
            try:
                return parse(obj, shape, cmap)
            except BadRecord:  # read by an older selectit under other rules: the stored text
                pass
    return Conversation((("user", item.instruction), ("assistant", item.output)), item.input or "")


def _original_object(item: Item) -> dict[str, Any] | None:
    if item.original is None:
        return None
    obj = json.loads(item.original)
    return obj if isinstance(obj, dict) else None


def row_name(item: Item) -> str:
    """How a warning names a record: its own id, else its sample id."""
    return item.original_id if item.original_id is not None else f"sample {item.sample_id}"


@dataclass
class Fit:
    """What a converted export makes of the selected records for trainers."""

    fmt: str
    kept: list[Item]
    left_out: list[str] = field(default_factory=list)  # `row_name` of each record left out
    reshaped: dict[str, int] = field(default_factory=dict)  # `RESHAPES` rule → records it changed

    @property
    def warning(self) -> str | None:
        """One line: how many rows were left out and which (None when none was)."""
        if not self.left_out:
            return None
        n, total = len(self.left_out), len(self.left_out) + len(self.kept)
        named = ", ".join(self.left_out[:LIST_LEFT_OUT]) + (", …" if n > LIST_LEFT_OUT else "")
        return (f"{n} of {total} rows left out of the {self.fmt} export: no user turn before an assistant turn "
                f"to start their conversation, or a tool turn right after a user turn, so LLaMA-Factory and TRL "
                f"cannot read them ({named}); the card lists them")

    def card(self) -> dict[str, Any]:
        """The card's ``trainer_shape``: the rules applied, how many records each changed, the rows left out."""
        return {"reshaped": {rule: {"records": n, "rule": RESHAPES[rule]} for rule, n in self.reshaped.items()},
                "left_out": {"rows": len(self.left_out), "ids": list(self.left_out)}}


def fit(items: Sequence[Item], fmt: str) -> Fit:
    """The records of a converted export of `fmt` as trainers read them (`Fit`)."""
    result = Fit(fmt, [])
    for item in items:
        shaped = trainer_turns(conversation(item), join_input=fmt not in TURN_FORMATS)
        if shaped is None and fmt in TURN_FORMATS:
            result.left_out.append(row_name(item))
            continue
        if fmt not in TURN_FORMATS and shaped is not None and any(role == "tool" for role, _ in shaped[1]):
            shaped = None  # the alpaca columns hold no tool turn: its stored text is written, not reshaped
        for rule in shaped[2] if shaped is not None else ():
            result.reshaped[rule] = result.reshaped.get(rule, 0) + 1
        result.kept.append(item)
    return result
