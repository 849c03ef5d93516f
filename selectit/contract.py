"""The vocabulary every part of selectit shares: states, layouts, formulas, and the engine contract.

No torch and no ORM here: the planner, the runner, the scoring engines (torch, vLLM), the
fusion and the CLI all import this module, and it imports nothing of theirs.

The engine contract (`ScoringEngine`: `score(requests)`, `close()`, `engine`, `engine_version`,
`forwards`; engines are loaded by name from a `ModelSpec`, see `selectit.scoring.engines`):
- each `RatingRequest` is one sample's turn with its K' rendered prompts (same layout and scale K);
  the result holds one `CellResult` per (request, prompt), in any order, carrying the request's
  `turn`; several turns of one sample may come in one call (a job of every turn): an engine may
  run their shared prefix once (a transcript's `RenderedPrompt.segments`), never change a cell;
- `probs[k-1]` = softmax over the **full vocabulary** at the prompt's last token, read at the
  token id of the digit k (k = 1..K), `mass` = Σ probs; the prompt is tokenized with the
  tokenizer's default special tokens, exactly as the model's own forward of that prompt would be;
- a prompt longer than the model's context loses its history's oldest turns first
  (`RatingRequest.shorter`), then the middle of its response, so the rating question stays; the
  cell is `truncated`;
- a request whose scoring fails yields failed cells (`probs=None`, `error` set); the other
  requests go on. Never a default score.

The conversation rules (`render_conversation`, `rated_turns`, `render_turn`) live here too: ingest
renders a record's last assistant turn by them and the runner its earlier turns, the same way.
"""

from __future__ import annotations

import os
import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from selectit.errors import BadInput, SelectitError


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


#: Jobs whose cells are still owed: the planner leaves their cells out.
OPEN_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class CellStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"


class Layout(StrEnum):
    """Where the sample sits in a rating prompt (docs/method.md §2)."""

    REFERENCE = "reference"  # the authors' code, byte for byte
    SHARED_CONTEXT = "shared-context"  # the sample first, then the rating question


class Formula(StrEnum):
    """The token-level normalisation (docs/method.md §5)."""

    PAPER = "paper"  # P'_k = p_k / Σ p_j
    REFERENCE_CODE = "reference-code"  # softmax of the above, as the authors' released code


class Turns(StrEnum):
    """Which assistant turns of a conversation `score` and `plan` rate (docs/method.md)."""

    ALL = "all"  # every rated turn: a cell per (sample, model, prompt, turn)
    LAST = "last"  # the last assistant turn only (turn 0), what selectit rated before revision 0011


class TurnsAgg(StrEnum):
    """How a sample's per-turn S_sent become one, before the model level (docs/method.md)."""

    LAST = "last"  # the last turn's S_sent (an Alpaca record's one turn)
    MEAN = "mean"  # the mean over every rated turn
    MIN = "min"  # the weakest turn


#: The built-in prompt set (created by `selectit init`); the fusion's default.
DEFAULT_PROMPT_SET = "default"
#: The fusion's other defaults (rank, select, export, report, sql and the library alike).
DEFAULT_ALPHA = 0.2
DEFAULT_TOP = 0.2  # share of the rankable samples: rounded down, at least one
DEFAULT_FORMULA = Formula.PAPER
#: What `selectit export` writes.
EXPORT_FORMATS = ("original", "alpaca-json", "jsonl", "sharegpt", "messages", "parquet", "hf-dataset")

#: Text right before the label in each layout: label token ids are derived in this context.
LABEL_CONTEXT: dict[Layout, str] = {Layout.REFERENCE: "\nThe answer is: \n", Layout.SHARED_CONTEXT: "\nRating: "}
#: A shared-context template ends here: the rating digit is read right after it.
SHARED_CONTEXT_END = ": "


class TemplateError(SelectitError):
    """A prompt template that cannot place a sample."""


class InvalidNameError(SelectitError):
    """A dataset, model, prompt set or selection name that cannot be stored as given."""


#: Names are at most this long (the VARCHAR(200) name columns).
MAX_NAME = 200


#: Bidirectional embeddings, overrides and isolates (U+202A-202E, U+2066-2069).
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _look_alike(c: str) -> str:
    """What `c` is when a name holding it prints like another name ("" when it is fine): an
    invisible format character (Unicode Cf: U+200B, U+00AD, U+FEFF, …) or a space other than
    U+0020 (Zs such as U+00A0, U+3000, and any other whitespace)."""
    if unicodedata.category(c) == "Cf":
        return "invisible format character"
    if c != " " and (c.isspace() or unicodedata.category(c) == "Zs"):
        return "space character"
    return ""


def valid_name(value: str, what: str) -> str:
    """`value` in Unicode NFC, or an error: a name is one non-empty line of printable text.

    NFC makes `café` typed on any keyboard one name; a line break would forge extra rows in
    every listing, so control characters are refused; so are invisible format characters and
    spaces other than ' ', with which two names would print alike.

    >>> valid_name("cafe\u0301", "dataset") == "caf\u00e9"
    True
    """
    if not isinstance(value, str):  # from the Python API: normalize() would raise a bare TypeError
        raise InvalidNameError(f"the {what} name must be a string; got {value!r}")
    name = unicodedata.normalize("NFC", value)
    if not name.strip():
        raise InvalidNameError(f"the {what} name is empty; give a name such as 'alpaca-v1'")
    bad = next((c for c in name if unicodedata.category(c) == "Cc" or c in "\u2028\u2029"), None)
    if bad is not None:
        raise InvalidNameError(f"the {what} name {name!r} holds the control character {bad!r}; "
                               f"a name is one line of printable text")
    bidi = next((c for c in name if c in _BIDI_CONTROLS), None)
    if bidi is not None:  # it would show the name's letters in another order than they are stored
        raise InvalidNameError(f"the {what} name {name!r} holds the bidirectional control {bidi!r}; "
                               f"a name is one line of printable text")
    if all(unicodedata.category(c) in ("Cf", "Zs", "Mn") for c in name):
        raise InvalidNameError(f"the {what} name {name!r} shows nothing (only invisible characters); "
                               f"give a name such as 'alpaca-v1'")
    found = next(((i, c, kind) for i, c in enumerate(name, 1) if (kind := _look_alike(c))), None)
    if found is not None:  # `a\u200bb` and `ab` would print alike in every listing, yet be two names
        i, c, kind = found
        raise InvalidNameError(f"the {what} name {name!r} holds the {kind} U+{ord(c):04X} "
                               f"({unicodedata.name(c, 'unnamed')}) at position {i}; it would print like "
                               f"another name: use visible characters and plain spaces")
    if len(name) > MAX_NAME:
        raise InvalidNameError(f"the {what} name is {len(name)} characters long; use at most {MAX_NAME}")
    return name


def valid_path(value: Any, option: str) -> str | os.PathLike[str]:
    """`value` when it can name a file (a str, or an os.PathLike of one), else `BadInput` naming
    `option`: a bytes path or another object would fail deep inside with a bare TypeError.

    >>> valid_path(b"/tmp/x", "--out")
    Traceback (most recent call last):
    selectit.errors.BadInput: --out must be a path (a str or a pathlib.Path); got b'/tmp/x'
    """
    if isinstance(value, str) or (isinstance(value, os.PathLike) and isinstance(os.fspath(value), str)):
        return value
    raise BadInput(f"{option} must be a path (a str or a pathlib.Path); got {value!r}")


def choices(enum: type[StrEnum]) -> str:
    """`a, b` — the values of an enum, for error messages."""
    return ", ".join(m.value for m in enum)


@dataclass(frozen=True)
class RenderedPrompt:
    head: str  # text before the response
    response: str  # the sample's output (truncation cuts from its middle)
    tail: str  # text after the response, ending where the label token is read
    #: The same text cut where it is tokenized piece by piece (a conversation's transcript, one
    #: piece per turn: `render_transcript`), so turn t's tokens are a prefix of turn t+1's; empty:
    #: the text is tokenized whole.
    segments: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return self.head + self.response + self.tail


_PLACEHOLDER = re.compile(r"\{(instruction|input|output)\}")


def _fill(template: str, values: dict[str, str]) -> str:
    # One pass of plain replacement: text inserted for one placeholder is never re-scanned.
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def render(layout: str, template: str, instruction: str, input: str, output: str) -> RenderedPrompt:
    """Place a sample in a prompt template; `.text` is exactly what the model reads.

    >>> render("reference", "Rate it.\\n", "Add 1 and 1.", "", "2").text
    'Rate it.\\n\\nInstruction:Add 1 and 1.\\nResponse:2\\nThe answer is: \\n'
    """
    if layout == Layout.REFERENCE:
        ins = instruction + "\n" + input if input else instruction
        return RenderedPrompt(template + "\n" + "Instruction:" + ins + "\n" + "Response:", output,
                              LABEL_CONTEXT[Layout.REFERENCE])
    if layout == Layout.SHARED_CONTEXT:
        if not input:
            template = "".join(line for line in template.splitlines(keepends=True) if "{input}" not in line)
        before, sep, after = template.partition("{output}")
        if not sep:
            raise TemplateError("a shared-context template needs an {output} placeholder")
        values = {"instruction": instruction, "input": input, "output": output}
        return RenderedPrompt(_fill(before, values), output, _fill(after, values))
    raise TemplateError(f"unknown layout {layout!r}; choose one of: {choices(Layout)}")


@dataclass(frozen=True)
class RatingRequest:
    """One sample's turn to rate with K' prompts of one prompt set.

    `shorter(d)`, for d = 1 .. `n_shorter`, renders the same prompts with the d oldest turns of the
    conversation's history left out: what an engine tries, oldest first, before cutting the
    response when a prompt is longer than the model's context (the rated turn is never cut while
    history is left)."""

    sample_id: int
    prompt_ids: tuple[int, ...]  # K' prompt versions, same layout and scale
    prompts: tuple[RenderedPrompt, ...]  # rendered, same order as prompt_ids
    scale: int  # K
    turn: int = 0  # counted back from the last assistant turn (`Score.turn`)
    n_shorter: int = 0
    shorter: Callable[[int], tuple[RenderedPrompt, ...]] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class CellResult:
    """The raw evidence of one (sample, prompt) cell, or why it failed."""

    sample_id: int
    prompt_id: int
    probs: tuple[float, ...] | None  # p_1..p_K; None if failed
    mass: float | None
    n_tokens: int
    truncated: bool
    error: str | None = None  # set ⇒ the cell failed
    partial: bool = False  # a label's probability was not returned (top-k mode): it counts as 0
    turn: int = 0  # as the request's

    @property
    def ok(self) -> bool:
        return self.error is None and self.probs is not None

    @classmethod
    def failed(cls, sample_id: int, prompt_id: int, error: str, n_tokens: int = 0,
               truncated: bool = False, turn: int = 0) -> CellResult:
        return cls(sample_id, prompt_id, None, None, n_tokens, truncated, error[:2000], turn=turn)


@dataclass(frozen=True)
class ModelSpec:
    """A model version as an engine sees it: a value, not a database row."""

    id: int
    name: str
    source: str  # hub id, local directory, .gguf file or alias
    fingerprint: str
    dtype: str
    max_tokens: int  # context used for truncation
    label_ids: dict[str, list[int]]  # layout → token ids of the labels 1..9
    n_params: int = 0
    endpoint: str | None = None  # a served model: the OpenAI-compatible server's base URL
    served_model: str | None = None  # … the id it serves the model under
    api_key_env: str | None = None  # … the environment variable holding its API key

    @classmethod
    def of(cls, row: Any) -> ModelSpec:
        """The spec of a `models` row (or anything with the same attributes)."""
        return cls(row.id, row.name, row.source, row.fingerprint, row.dtype, row.max_tokens,
                   dict(row.label_ids or {}), int(row.n_params or 0), getattr(row, "endpoint", None),
                   getattr(row, "served_model", None), getattr(row, "api_key_env", None))


class ScoringEngine(ABC):
    """A loaded rating model: what the runner needs of every engine (see the module docstring).

    An engine is registered by name (`selectit.scoring.engines`): its loader takes a `ModelSpec` and the
    `EngineOptions` and returns a `ScoringEngine`.
    """

    #: The engine's name, recorded on every score row it writes ("torch", "vllm", …).
    engine: ClassVar[str] = ""
    #: What computed the probabilities, e.g. "torch 2.13.0, transformers 5.23.0" (set when loaded).
    engine_version: str = ""
    #: Forward passes (or requests) run so far, for throughput figures.
    forwards: int = 0

    @abstractmethod
    def score(self, requests: Sequence[RatingRequest],
              progress: Callable[[int], None] | None = None) -> list[CellResult]:
        """One `CellResult` per (request, prompt); `progress(n)` is called as cells are finished."""

    def prepare(self, requests: Sequence[RatingRequest]) -> None:  # noqa: B027 - optional
        """Do now, on the caller's thread, what `score(requests)` would do first (tokenize), so that
        `score` of these very requests starts on the model at once; the default does nothing."""

    def close(self) -> None:  # noqa: B027 - optional: most engines hold nothing to release
        """Release what the engine holds (an engine process, a client); the default holds nothing."""


Item = TypeVar("Item")
Out = TypeVar("Out")


def split_on_failure(items: Sequence[Item], run: Callable[[list[Item]], Sequence[Out]],
                     on_error: Callable[[Exception], None] | None = None) -> list[tuple[Item, Out | None, str | None]]:
    """`run(items)` as (item, output, None) per item; where it raises, the items are split in halves
    until each failing item is alone and gets (item, None, "Type: message"). One failing sample
    never sinks its neighbours. `on_error(exc)` sees every failure (e.g. to shrink a batch on OOM).

    >>> split_on_failure([1, 2, 3], lambda xs: [1 / (x - 2) for x in xs])[1]
    (2, None, 'ZeroDivisionError: division by zero')
    """
    items = list(items)
    if not items:
        return []
    try:
        outputs = list(run(items))
        if len(outputs) != len(items):
            raise RuntimeError(f"{len(outputs)} results for {len(items)} inputs")
    except Exception as exc:  # noqa: BLE001 - isolated below, reported per item
        if on_error is not None:
            on_error(exc)
        if len(items) == 1:
            return [(items[0], None, f"{type(exc).__name__}: {exc}"[:2000])]
        half = len(items) // 2
        return split_on_failure(items[:half], run, on_error) + split_on_failure(items[half:], run, on_error)
    return [(item, out, None) for item, out in zip(items, outputs)]


# ---------------------------------------------------------------------------------------- conversations
#: One turn of a conversation: (role, text), role ∈ system, user, assistant, tool.
Turn = tuple[str, str]
ROLE_LABEL = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


class BadRecord(Exception):
    """One record is invalid; the message is the reason."""


def render_conversation(turns: list[Turn] | tuple[Turn, ...]) -> tuple[str, str]:
    """(instruction, output) of a conversation given as (role, text) pairs, role ∈ system/user/assistant/tool.

    The last assistant turn is the output; the turns before it are the instruction: one single
    user turn as is, otherwise ``"<Role>: <text>"`` lines joined by ``"\\n"``.
    """
    last = last_assistant(turns)
    if last is None:
        raise BadRecord("no assistant turn (the last assistant turn is the response)")
    output = turns[last][1]
    if not output.strip():
        raise BadRecord(f"empty response (turn {last + 1}, the last assistant turn)")
    context = turns[:last]
    if not context:
        raise BadRecord("no turn before the last assistant turn (it would be the instruction)")
    if len(context) == 1 and context[0][0] == "user":
        instruction = context[0][1]
    else:
        instruction = "\n".join(f"{ROLE_LABEL[role]}: {text}" for role, text in context)
    if not instruction.strip():
        raise BadRecord("empty instruction (the turns before the last assistant turn are empty)")
    return instruction, output


def rated_turns(turns: Sequence[Turn]) -> list[int]:
    """Indices of the assistant turns rated, oldest first: each one renders as a sample (a
    non-empty response after a non-empty context), the last assistant turn among them."""
    rated = []
    for i, (role, _) in enumerate(turns):
        if role == "assistant":
            try:
                render_conversation(turns[:i + 1])
            except BadRecord:
                continue
            rated.append(i)
    return rated


def _turns_through(turns: Sequence[Turn], turn: int, drop: int) -> list[Turn]:
    """The conversation through rated turn `turn` (counted back), less its `drop` oldest context
    turns (a leading system turn is kept). `IndexError` when there is no such turn."""
    rated = rated_turns(turns)
    if not 0 <= turn < len(rated):
        raise IndexError(f"turn {turn} of a conversation with {len(rated)} rated turns")
    upto = list(turns[:rated[-1 - turn] + 1])
    if drop:
        keep = 1 if upto[0][0] == "system" else 0
        upto = upto[:keep] + upto[keep + drop:]
    return upto


def render_turn(turns: Sequence[Turn], turn: int, *, drop: int = 0) -> tuple[str, str]:
    """(instruction, output) of the rated turn `turn` (counted back: 0 is the last assistant
    turn) of a stored conversation, as `render_conversation` renders that turn's conversation;
    `drop` > 0 leaves out that many of its oldest context turns (a leading system turn is kept),
    how a history too long for the model is cut. `IndexError` when there is no such turn."""
    return render_conversation(_turns_through(turns, turn, drop))


def history_cuts(turns: Sequence[Turn], turn: int) -> int:
    """How many oldest context turns `render_turn` may drop for `turn`: all but the one right
    before the rated turn (and a leading system turn)."""
    rated = rated_turns(turns)
    context = rated[-1 - turn]
    keep = 1 if turns and turns[0][0] == "system" else 0
    return max(0, context - keep - 1)


#: The version of the rendering rules, part of each cell's key (`Score.rendering`): a cell rendered
#: by other rules is kept for audit but never read with these. 1: a sample of several rated turns
#: in the shared-context layout is a transcript (`render_transcript`); every other sample renders
#: as under version 0 (the cells revision 0014 found carry 1 unless that rule changed their text).
RENDERING = 1
#: Between a transcript and the template's rating question: what "the response" is.
TRANSCRIPT_BRIDGE = "\n\nThe response to rate is the assistant's last reply above."


def shares_turns(layout: str, n_turns: int) -> bool:
    """Whether a sample's turns render as one growing transcript (and so score in one pass): a
    conversation of several rated turns in the shared-context layout. The `reference` layout
    wraps the sample inside the prompt, so its turns share no prefix."""
    return layout == Layout.SHARED_CONTEXT and n_turns > 1


def render_transcript(template: str, turns: Sequence[Turn], turn: int, *, drop: int = 0) -> RenderedPrompt:
    """Rated turn `turn` (counted back) of a conversation in a shared-context `template`, as a
    transcript: the template's text before `{instruction}`, one ``"<Role>: <text>"`` line per turn
    through the rated reply, `TRANSCRIPT_BRIDGE`, then the template's text after `{output}` (the
    rating question). Its `segments` are the text before the transcript and one per line (each
    line after the first starts with its ``"\\n"``), so the tokens of turn t's transcript are a
    prefix of turn t+1's. `drop` leaves out the oldest context turns, as `render_turn`.

    >>> render_transcript("Chat:\\n{instruction}\\n{output}\\nRating: ", [("user", "Hi"), ("assistant", "Yo")], 0).segments
    ('Chat:\\n', 'User: Hi', '\\nAssistant: Yo', "\\n\\nThe response to rate is the assistant's last reply above.\\nRating: ")
    """
    upto = _turns_through(turns, turn, drop)
    template = "".join(line for line in template.splitlines(keepends=True) if "{input}" not in line)
    before, sep, rest = template.partition("{instruction}")
    _, sep2, after = rest.partition("{output}")
    if not (sep and sep2):
        raise TemplateError("a shared-context template needs {instruction} before {output}")
    empty = {"instruction": "", "input": "", "output": ""}
    lines = [f"{ROLE_LABEL[role]}: {text}" for role, text in upto]
    segments = (_fill(before, empty), lines[0], *("\n" + line for line in lines[1:]),
                TRANSCRIPT_BRIDGE + _fill(after, empty))
    label = ROLE_LABEL["assistant"] + ": "
    head = "".join(segments[:-2]) + ("\n" if len(lines) > 1 else "") + label
    return RenderedPrompt(head, upto[-1][1], segments[-1], segments)


def last_assistant(turns: list[Turn] | tuple[Turn, ...]) -> int | None:
    return max((i for i, (role, _) in enumerate(turns) if role == "assistant"), default=None)
