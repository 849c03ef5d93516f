"""Records as conversations: the one copy of the role tables, the record shapes and the rendering of
a record into a sample, used both to read records (ingest) and to write them (export).

Every record shape is parsed into a `Conversation`: its turns in order, ``(role, text)`` with role ∈
system, user, assistant, tool, and (an Alpaca record's) ``input`` kept apart from the last user
turn. Shapes:

- ``alpaca``: ``{"instruction", "input", "output"}`` with an optional ``system`` prompt and
  LLaMA-Factory's ``history`` (``[[user, assistant], …]``, the exchanges before the instruction),
  through a column map (``{"instruction": "question", …}``);
- ``sharegpt``: ``{"conversations": [{"from", "value"}], "system"}``;
- ``messages``: ``{"messages": [{"role", "content"}]}``;
- ``prompt-completion``: TRL's two strings, or two message lists.

The sample (`Conversation.sample`): the *last* assistant turn is the ``output``; the turns before
it are the ``instruction``, one single user turn as is, else one turn per line as ``"<Role>:
<text>"`` (Role ∈ System, User, Assistant, Tool); the turns after it are not rated
(`Conversation.trailing`). Canonical form (`canonical`) and the content hash (`content_hash`) of
the stored fields are defined here too.

Writers take a conversation through its last assistant turn (`Conversation.rated`), reshape it as
trainers read it (`trainer_turns`: it starts with a user turn, roles alternate; `RESHAPES`) and
shape it (`alpaca_fields`, `sharegpt_fields`, `messages_fields`). A record whose converted shape would come
back as another sample (an Alpaca ``input`` merged into the user turn) carries the sample's
``content_hash``; `split_by_hash` reads it back as the same instruction and input.

Column maps (`parse_column_map`, ``--map instruction=question,…``) name a file's own columns for
these fields; `IngestError` is a file that cannot be ingested, `BadRecord` one invalid record.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectit.contract import (  # noqa: F401 - the conversation rules, re-exported for io
    ROLE_LABEL,
    BadRecord,
    Turn,
    last_assistant,
    history_cuts,
    rated_turns,
    render_conversation,
    render_turn,
)
from selectit.errors import SelectitError

SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant", "function_call": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "observation": "tool",
}
MESSAGE_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant",
                 "tool": "tool", "function": "tool"}
#: role → ShareGPT's ``from`` as LLaMA-Factory writes it.
SHAREGPT_FROM = {"user": "human", "assistant": "gpt", "tool": "observation", "system": "system"}
#: The metadata field of an exported record naming its sample (`split_by_hash`).
HASH_FIELD = "content_hash"
_HEX64 = re.compile(r"[0-9a-f]{64}")


#: What real conversation data does that a record shape does not forbid, and what selectit makes of
#: it (`Conversation.quirks`; ingest names the records of each in one warning line per rule).
QUIRKS = {
    "leading-assistant": "start with an assistant turn: it is context for the turns after it, not rated",
    "empty-turn": "have an empty turn: an empty answer is not rated, an empty question stays in the context",
    "same-role-run": "have two turns of one role in a row: stored and rated as they are (one context line each); "
                     "converted exports merge them into one turn",
    "role-alias": "name a role by an alias (bing, chatgpt, user, developer, …): read as the role it names; "
                  "converted exports write the standard name",
}
#: The role names LLaMA-Factory's and TRL's default tags read; any other name `turns_of` maps is an
#: alias (a quirk: the record's original, exported as is, loses the turn in LLaMA-Factory).
STANDARD_ROLES = {"conversations": {"human", "gpt", "system", "observation", "function_call"},
                  "messages": {"system", "user", "assistant", "tool"}}
#: What converted exports do to a conversation so that trainers read it (`trainer_turns`).
RESHAPES = {
    "leading-assistant": "turns before the first user turn (context, never rated) left out",
    "same-role-run": "turns of one role in a row merged into one",
    "system-moved": "system turns gathered into one system prompt at the start",
}


class IngestError(SelectitError):
    """The file cannot be ingested; nothing from it was committed."""


# ---------------------------------------------------------------------------------------- text
def canonical(text: str) -> str:
    """The canonical form of one field: ``\\r\\n`` → ``\\n``, then Unicode NFC."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    # ASCII is always NFC; the test saves a normalisation pass on most records.
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def digest(instruction: str, input: str, output: str) -> str:
    """content_hash of fields already in canonical form."""
    i, n, o = instruction.encode(), input.encode(), output.encode()
    return hashlib.sha256(b"%d:%s%d:%s%d:%s" % (len(i), i, len(n), n, len(o), o)).hexdigest()


def content_hash(instruction: str, input: str, output: str) -> str:
    """sha256 hex of the canonical fields, each preceded by its UTF-8 byte length and ``:``.

    >>> content_hash("Hi", "", "Line\\r\\n") == content_hash("Hi", "", "Line\\n")
    True
    """
    return digest(canonical(instruction), canonical(input), canonical(output))


def split_by_hash(instruction: str, input: str, output: str, claimed: Any) -> tuple[str, str]:
    """(instruction, input) of canonical fields, split at the newline that makes them the sample
    `claimed` names (an exported record's ``content_hash``): an Alpaca instruction and input that a
    conversation format merged into one user turn. Unchanged when the hash already matches, names
    no such split (the text was edited), or is no hash at all."""
    if input or not isinstance(claimed, str) or not _HEX64.fullmatch(claimed):
        return instruction, input
    if digest(instruction, input, output) == claimed:
        return instruction, input
    at = instruction.find("\n")
    while at != -1:
        if digest(instruction[:at], instruction[at + 1:], output) == claimed:
            return instruction[:at], instruction[at + 1:]
        at = instruction.find("\n", at + 1)
    return instruction, input


def json_type(value: Any) -> str:
    """How JSON calls the type of a parsed value (for messages: never a Python type name)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _field(obj: dict[str, Any], key: str, *, required: bool) -> str:
    if key not in obj or (obj[key] is None and required):
        if required:
            raise BadRecord(f"missing field '{key}'")
        return ""
    value = obj[key]
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRecord(f"field '{key}' is not a string (got {json_type(value)})")
    if required and not value.strip():
        raise BadRecord(f"empty field '{key}'")
    return value


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: keep the text parts
        parts = []
        for part in value:
            text = part.get("text", part.get("value")) if isinstance(part, dict) else None
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(text, str):
                parts.append(text)
            else:
                raise BadRecord(f"{where} has non-text content")
        return "".join(parts)
    if value is None:
        return ""
    raise BadRecord(f"{where} is not a string (got {json_type(value)})")


# ---------------------------------------------------------------------------------------- conversations


@dataclass(frozen=True)
class Conversation:
    """A record as turns in order (system turns included) and an Alpaca record's ``input``."""

    turns: tuple[Turn, ...]
    input: str = ""

    def sample(self) -> tuple[str, str, str]:
        """(instruction, input, output) as stored and rated (before `canonical`)."""
        instruction, output = render_conversation(self.turns)
        return instruction, self.input, output

    def stored_turns(self) -> list[list[str]] | None:
        """The conversation through its last assistant turn as stored with the sample
        (`samples.turns`: [[role, text], …], texts in canonical form), or None when its context is
        a single user turn (an Alpaca record: nothing but the stored fields to render)."""
        turns = self.rated().turns
        if len(turns) <= 2 and turns[0][0] == "user":
            return None
        return [[role, canonical(text)] for role, text in turns]

    def quirks(self) -> tuple[str, ...]:
        """The `QUIRKS` this conversation's turns have (ingest names the records of each; nothing is
        changed); ``role-alias`` is a record's (`role_aliases`)."""
        talk = [(role, text) for role, text in self.turns if role != "system"]
        found = []
        if talk and talk[0][0] == "assistant":
            found.append("leading-assistant")
        if any(not text.strip() for _, text in self.turns):
            found.append("empty-turn")
        if any(a[0] == b[0] for a, b in zip(talk, talk[1:])):
            found.append("same-role-run")
        return tuple(found)

    @property
    def trailing(self) -> int:
        """How many turns follow the last assistant turn (not rated)."""
        last = last_assistant(self.turns)
        return 0 if last is None else len(self.turns) - last - 1

    def rated(self) -> Conversation:
        """The conversation through its last assistant turn: what was rated."""
        return Conversation(self.turns[:len(self.turns) - self.trailing], self.input)

    def merged(self) -> list[Turn]:
        """The turns with ``input`` joined to the user turn before the last assistant turn (as
        LLaMA-Factory joins an Alpaca record's instruction and input)."""
        turns = list(self.turns)
        last = last_assistant(turns)
        if self.input and last is not None and last > 0:
            role, text = turns[last - 1]
            turns[last - 1] = (role, text + "\n" + self.input)
        return turns


def turns_of(obj: dict[str, Any], key: str) -> list[Turn]:
    """The turns of a ShareGPT (``conversations``, with its top-level ``system`` first), messages or
    TRL message list; `BadRecord` names what is wrong."""
    if key not in obj or obj[key] is None:
        raise BadRecord(f"missing field '{key}'")
    seq = obj[key]
    if not isinstance(seq, list):
        raise BadRecord(f"field '{key}' is not a list (got {json_type(seq)})")
    sharegpt = key == "conversations"
    role_key, text_key = ("from", "value") if sharegpt else ("role", "content")
    roles = SHAREGPT_ROLES if sharegpt else MESSAGE_ROLES
    turns: list[Turn] = []
    if sharegpt and obj.get("system") is not None and not isinstance(obj["system"], str):
        raise BadRecord(f"field 'system' is not text (got {json_type(obj['system'])})")
    if sharegpt and isinstance(obj.get("system"), str) and obj["system"].strip():
        turns.append(("system", obj["system"]))
    for n, turn in enumerate(seq, 1):
        if not isinstance(turn, dict):
            raise BadRecord(f"{key}[{n}] is not an object")
        role = roles.get(str(turn.get(role_key, "")).lower())
        if role is None:
            raise BadRecord(f"{key}[{n}] has unknown {role_key} {turn.get(role_key)!r}")
        turns.append((role, _content(turn.get(text_key), f"{key}[{n}].{text_key}")))
    return turns


def role_aliases(obj: dict[str, Any], shape: str) -> set[str]:
    """The role names of a ShareGPT or messages record that are aliases (`STANDARD_ROLES`): ``bing``,
    ``chatgpt``, ``user`` in ShareGPT; ``developer``, ``function``, ``User`` in messages."""
    found: set[str] = set()
    for key in {"sharegpt": ("conversations",), "messages": ("messages",),
                "prompt-completion": ("prompt", "completion")}.get(shape, ()):
        seq = obj.get(key)
        role_key, standard = ("from", STANDARD_ROLES[key]) if key == "conversations" else ("role", STANDARD_ROLES["messages"])
        for turn in seq if isinstance(seq, list) else ():
            name = turn.get(role_key) if isinstance(turn, dict) else None
            if isinstance(name, str) and name not in standard:
                found.add(name)
    return found


def _history(obj: dict[str, Any], key: str) -> list[Turn]:
    """LLaMA-Factory's ``history``: a list of [user, assistant] pairs; null or "" (an empty CSV
    cell) is none. Anything else (JSON text in a string, a number, an object) is an invalid
    record, like a malformed list: dropping it would rate the instruction without its context."""
    value = obj.get(key)
    if value is None or value == "":
        return []
    if not isinstance(value, list):
        raise BadRecord(f"field '{key}' is not a list of [user, assistant] text pairs (got {json_type(value)})")
    if not all(isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair) for pair in value):
        raise BadRecord(f"field '{key}' is not a list of [user, assistant] text pairs")
    return [turn for user, assistant in value for turn in (("user", user), ("assistant", assistant))]


def _alpaca(obj: dict[str, Any], cmap: dict[str, str]) -> Conversation:
    instruction = _field(obj, cmap.get("instruction", "instruction"), required=True)
    inp = _field(obj, cmap.get("input", "input"), required=False)
    output = _field(obj, cmap.get("output", "output"), required=True)
    system = _field(obj, cmap.get("system", "system"), required=False)
    turns = [("system", system)] if system.strip() else []
    turns += _history(obj, cmap.get("history", "history"))
    return Conversation((*turns, ("user", instruction), ("assistant", output)), inp)


def _prompt_completion(obj: dict[str, Any], _cmap: dict[str, str]) -> Conversation:
    """TRL's prompt-completion records: two strings (standard) or two message lists (conversational)."""
    if isinstance(obj.get("prompt"), list) or isinstance(obj.get("completion"), list):
        return Conversation(tuple(turns_of(obj, "prompt") + turns_of(obj, "completion")))
    prompt, completion = _field(obj, "prompt", required=True), _field(obj, "completion", required=True)
    return Conversation((("user", prompt), ("assistant", completion)))


SHAPES: dict[str, Callable[[dict[str, Any], dict[str, str]], Conversation]] = {
    "alpaca": _alpaca,
    "sharegpt": lambda obj, _cmap: Conversation(tuple(turns_of(obj, "conversations"))),
    "messages": lambda obj, _cmap: Conversation(tuple(turns_of(obj, "messages"))),
    "prompt-completion": _prompt_completion,
}
#: The fields by which `shape_of` recognises a record, for the errors that list them.
SHAPE_FIELDS = "instruction/input/output, conversations, messages or prompt/completion"


def shape_of(keys: list[str] | set[str] | dict[str, Any]) -> str | None:
    """The shape a record (or a table's columns) has, by its field names; None when none fits."""
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if "instruction" in keys or "output" in keys:
        return "alpaca"
    if "prompt" in keys and "completion" in keys:
        return "prompt-completion"
    return None


def parse(obj: dict[str, Any], shape: str, column_map: dict[str, str] | None = None) -> Conversation:
    """The conversation of a record of `shape` (`BadRecord` when it is not one)."""
    return SHAPES[shape](obj, column_map or {})


# ---------------------------------------------------------------------------------------- shapes out
def _join(a: str, b: str) -> str:
    """Two turns of one role as one: their texts a blank line apart (an empty one adds nothing)."""
    return a + "\n\n" + b if a.strip() and b.strip() else (a if a.strip() else b)


def trainer_turns(conv: Conversation, *, join_input: bool = True) -> tuple[str, list[Turn], tuple[str, ...]] | None:
    """The rated conversation as LLaMA-Factory's converter and TRL's chat format read it: (the
    system prompt, the turns, the `RESHAPES` applied). The turns start with a user turn, alternate
    user (or tool) and assistant, and end with the rated assistant turn. None when no such turns
    remain (nothing but assistant turns; a user turn followed by a tool turn): the record cannot be
    written for a trainer. `join_input`: an Alpaca ``input`` joined to its user turn (`merged`)."""
    turns = conv.rated().merged() if join_input else list(conv.rated().turns)
    done: list[str] = []
    first_talk = next((i for i, (role, _) in enumerate(turns) if role != "system"), len(turns))
    if any(role == "system" for role, _ in turns[first_talk:]):
        done.append("system-moved")
    system = "\n".join(text for role, text in turns if role == "system")
    talk = [(role, text) for role, text in turns if role != "system"]
    first_user = next((i for i, (role, _) in enumerate(talk) if role == "user"), None)
    if first_user is None:
        return None
    if first_user:  # context the rater saw, never rated: a trainer would learn it as an answer to nothing
        done.append("leading-assistant")
    merged: list[Turn] = []
    for role, text in talk[first_user:]:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, _join(merged[-1][1], text))
            if "same-role-run" not in done:
                done.append("same-role-run")
        else:
            merged.append((role, text))
    slots = ["assistant" if role == "assistant" else "user" for role, _ in merged]
    if len(merged) % 2 or slots != ["user", "assistant"] * (len(merged) // 2):
        return None
    return system, merged, tuple(done)


def alpaca_fields(conv: Conversation) -> dict[str, Any] | None:
    """``{"instruction", "input", "output"}`` + ``system`` and ``history`` (LLaMA-Factory's alpaca
    columns) of `trainer_turns` when they are needed; None when the turns do not fit that shape (a
    tool turn, or no trainer turns at all)."""
    shaped = trainer_turns(conv, join_input=False)
    if shaped is None or any(role == "tool" for role, _ in shaped[1]):
        return None
    system, turns, _ = shaped
    record: dict[str, Any] = {"instruction": turns[-2][1], "input": conv.input, "output": turns[-1][1]}
    if system:
        record["system"] = system
    if len(turns) > 2:
        record["history"] = [[turns[i][1], turns[i + 1][1]] for i in range(0, len(turns) - 2, 2)]
    return record


def sharegpt_fields(conv: Conversation) -> dict[str, Any] | None:
    """``{"conversations": [{"from", "value"}], "system"}`` of `trainer_turns` (None: none)."""
    shaped = trainer_turns(conv)
    if shaped is None:
        return None
    system, turns, _ = shaped
    record: dict[str, Any] = {"conversations": [{"from": SHAREGPT_FROM[r], "value": t} for r, t in turns]}
    if system:
        record["system"] = system
    return record


def messages_fields(conv: Conversation) -> dict[str, Any] | None:
    """``{"messages": [{"role", "content"}]}`` of `trainer_turns`, the system prompt first (None: none)."""
    shaped = trainer_turns(conv)
    if shaped is None:
        return None
    system, turns, _ = shaped
    head = [{"role": "system", "content": system}] if system else []
    return {"messages": head + [{"role": r, "content": t} for r, t in turns]}


def comes_back_as(record: dict[str, Any], shape: str) -> str | None:
    """The content hash a written record is read back as (None: not a valid record)."""
    try:
        instruction, inp, output = parse(record, shape).sample()
    except BadRecord:
        return None
    return digest(canonical(instruction), canonical(inp), canonical(output))


# ---------------------------------------------------------------------------------------- column maps

MAP_FIELDS = ("instruction", "input", "output", "system", "history", "id")
MAP_ALIASES = {"prompt": "instruction", "completion": "output"}
#: Columns that usually hold a field, for the hint when a record lacks the field.
_LIKELY = {"instruction": ("question", "prompt", "query", "instruction_text"),
           "input": ("context", "input_text"),
           "output": ("response", "answer", "completion", "output_text", "target"),
           "system": ("system_prompt",)}


def parse_column_map(spec: str | dict[str, str] | None) -> dict[str, str]:
    """``"instruction=question,output=response"`` → {"instruction": "question", "output": "response"}."""
    if not spec:
        return {}
    if not isinstance(spec, (str, dict)):  # the Python API's map=: a .split() would raise AttributeError
        raise IngestError(f"--map is 'instruction=question,…' or a dict of field → column; got {spec!r}")
    pairs = spec.items() if isinstance(spec, dict) else (p.partition("=")[::2] for p in spec.split(",") if p.strip())
    result: dict[str, str] = {}
    for target, column in pairs:
        if not (isinstance(target, str) and isinstance(column, str)):
            raise IngestError(f"--map names fields and columns with strings; got {target!r}: {column!r}")
        target, column = target.strip(), column.strip()
        name = MAP_ALIASES.get(target, target)
        if name not in MAP_FIELDS:
            raise IngestError(f"--map {target}={column}: unknown field {target!r}; map instruction, input, output, "
                              f"system (or prompt, completion), e.g. --map instruction=question,output=response")
        if not column:
            raise IngestError(f"--map {target}=: give the column that holds {name}, e.g. --map {target}=question")
        if name in result:
            raise IngestError(f"--map maps {name} twice ({result[name]} and {column}); give one column per field")
        result[name] = column
    return result


def map_hint(fields: Sequence[str]) -> str:
    """``--map output=response`` for a file whose records name the fields otherwise (or "")."""
    have = set(fields)
    pairs = [f"{name}={col}" for name, cols in _LIKELY.items() if name not in have
             for col in cols[:] if col in have][:4]
    seen: set[str] = set()
    pairs = [p for p in pairs if not (p.split("=")[0] in seen or seen.add(p.split("=")[0]))]
    return f"--map {','.join(pairs)}" if pairs else ""


def check_map(path: Path, column_map: dict[str, str], columns: Sequence[str]) -> None:
    for name, column in column_map.items():
        if column not in columns:
            raise IngestError(f"{path}: --map {name}={column} names a column the file does not have; its columns "
                              f"are {', '.join(sorted(columns))}. Nothing was ingested; fix --map.")
