"""Model versions, prompt sets, prompt layouts and rendering (docs/method.md §1–§2).

A *model version* is (name, weights fingerprint, dtype): re-adding a name with other weights or
another dtype makes a new row and deactivates the old one, so its cells become missing.
A *prompt set* is K' prompts with one layout and one scale K; editing a prompt makes a new
version at the same position and deactivates the old one.

Layouts (docs/method.md §2):
- `reference`: the authors' code byte for byte; the template is one line of their prompts file,
  keeping its trailing newline (`readlines()` semantics).
- `shared-context`: the sample first, then the rating question; the template fills
  `{instruction}`, `{input}`, `{output}` by plain replacement (never `str.format`). A template line
  holding `{input}` is dropped when the sample has no input. The template must end with `": "`,
  where the rating digit is read.

No torch import here; transformers is imported inside `add_model` (tokenizer and config only).
"""

from __future__ import annotations

import hashlib
import math
import numbers
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from selectit.contract import (  # noqa: F401 - render and RenderedPrompt are re-exported
    DEFAULT_PROMPT_SET,
    LABEL_CONTEXT,
    SHARED_CONTEXT_END,
    Layout,
    RenderedPrompt,
    render,
    valid_name,
    valid_path,
)
from selectit.errors import SelectitError
from selectit.scoring.endpoints import Endpoint, redact
from selectit.scoring.labels import LabelError, label_token_ids  # noqa: F401 - re-exported
from selectit.store.schema import LLM, MAX_SCALE, Prompt

LAYOUTS = tuple(Layout)
#: The context length used unless `--max-tokens` says otherwise (capped by the model's own).
DEFAULT_MAX_TOKENS = 4096
#: A context shorter than this cannot hold a rating prompt: every cell would fail.
MIN_MAX_TOKENS = 16
#: No context is longer (and the column is a 32-bit integer on PostgreSQL).
MAX_MAX_TOKENS = 2**31 - 1
#: The most parameters a model may declare (the column is a 64-bit integer).
MAX_PARAMS = 2**63 - 1

_DEFAULT_HEAD = (
    "Below is an instruction for an AI assistant and the assistant's response.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n{output}\n\n"
)
_DEFAULT_QUESTIONS = (
    "How well does the response follow the instruction? Rate it from 1 (poorly) to 5 (perfectly).",
    "Rate the accuracy of the response on a scale of 1 to 5, where 5 means fully correct.",
    "On a scale from 1 to 5, how helpful is the response to the person who gave the instruction?",
    "Score the overall quality of the response from 1 (very poor) to 5 (excellent).",
    "Considering correctness, completeness and clarity, rate the response from 1 to 5.",
)
#: The built-in `default` set: shared-context layout, scale 1–5, five phrasings.
DEFAULT_TEMPLATES = tuple(_DEFAULT_HEAD + q + "\nAnswer with one digit.\nRating: " for q in _DEFAULT_QUESTIONS)


class RegistryError(SelectitError):
    """A model or prompt that cannot be registered as asked."""


# ---------------------------------------------------------------------------------------------
# Rendering


# ---------------------------------------------------------------------------------------------
# Prompt sets


def text_hash(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()


def _check_template(layout: str, template: str, where: str) -> None:
    if layout not in LAYOUTS:
        raise RegistryError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    if not template.strip():
        raise RegistryError(f"{where}: the prompt is empty")
    if "\x00" in template:  # PostgreSQL text cannot hold it, and no tokenizer means it
        raise RegistryError(f"{where}: the prompt contains a NUL character; remove it")
    if layout == Layout.SHARED_CONTEXT:
        if template.count("{output}") != 1:
            raise RegistryError(f"{where}: a shared-context prompt needs exactly one {{output}} placeholder")
        if "{instruction}" not in template:
            raise RegistryError(f"{where}: a shared-context prompt needs an {{instruction}} placeholder")
        lines = template.splitlines()
        for n, line in enumerate(lines, 1):
            # A line holding {input} is dropped for a sample without input: anything else on it
            # (the instruction, the response, the rating question) would be dropped with it.
            if "{input}" in line and ("{instruction}" in line or "{output}" in line or n == len(lines)):
                raise RegistryError(
                    f"{where}: the line {line!r} holds {{input}} and more; that line is dropped when a sample has "
                    f"no input, so put {{input}} on a line of its own (e.g. 'Input:\\n{{input}}\\n')"
                )
        if not template.endswith(SHARED_CONTEXT_END):
            raise RegistryError(
                f"{where}: a shared-context prompt must end with {SHARED_CONTEXT_END!r}, where the rating digit "
                f"is read (e.g. '…\\nRating: '); in a prompts file write it as \\n escapes on one line"
            )


def set_prompts(session: Session, set_name: str, layout: str, templates: list[str], scale: int = 5) -> list[Prompt]:
    """Make `templates` the active prompts of `set_name` (positions 0..n-1), versioning changes."""
    set_name = valid_name(set_name, "prompt set")
    if not 2 <= scale <= MAX_SCALE:
        raise RegistryError(f"scale {scale} is out of range; use 2 to {MAX_SCALE} (each label must be one digit)")
    if not templates:
        raise RegistryError(f"prompt set {set_name!r}: no prompts given")
    for i, t in enumerate(templates):
        _check_template(layout, t, f"prompt set {set_name!r}, prompt {i + 1}")
    rows = session.scalars(sa.select(Prompt).where(Prompt.set_name == set_name)).all()
    result: list[Prompt] = []
    for position, template in enumerate(templates):
        h = text_hash(template)
        keep = None
        for row in rows:
            if row.position != position:
                continue
            same = row.layout == layout and row.scale == scale and row.text_hash == h
            if same:
                keep = row
            elif row.active:
                row.active = False  # an edited prompt: the old version leaves the active views
        if keep is None:
            keep = Prompt(set_name=set_name, position=position, layout=layout, template=template,
                          text_hash=h, scale=scale, active=True)
            session.add(keep)
        keep.active = True
        result.append(keep)
    for row in rows:
        if row.position >= len(templates):
            row.active = False
    session.flush()
    return result


def ensure_default_prompts(session: Session) -> list[Prompt]:
    """The built-in `default` set (idempotent; it is not re-activated if the user replaced it)."""
    exists = session.scalar(sa.select(sa.func.count()).select_from(Prompt).where(Prompt.set_name == DEFAULT_PROMPT_SET))
    if exists:
        return active_prompts(session, DEFAULT_PROMPT_SET)
    return set_prompts(session, DEFAULT_PROMPT_SET, Layout.SHARED_CONTEXT, list(DEFAULT_TEMPLATES), scale=5)


def active_prompts(session: Session, set_name: str) -> list[Prompt]:
    """The active prompts of a set, ordered by position."""
    return list(session.scalars(
        sa.select(Prompt).where(Prompt.set_name == set_name, Prompt.active.is_(True)).order_by(Prompt.position)
    ))


def read_prompt_lines(path: str | Path) -> list[str]:
    """Lines with Python `readlines()` semantics: each keeps its newline, the last may have none."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # a BOM is no part of the first prompt
            text = f.read()
    except FileNotFoundError:
        raise RegistryError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise RegistryError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    # Universal newlines like readlines(): \r\n and \r become \n, and only \n ends a line
    # (str.splitlines() would also cut a prompt at U+2028, U+0085, \x0c, … inside it).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def import_prompts(session: Session, path: str | Path, set_name: str, layout: str,
                   first: int | None = None, scale: int = 5) -> list[Prompt]:
    """One prompt per line of `path` (the first `first` lines) as the active prompts of `set_name`.

    `reference`: each line is the template as is, trailing newline included. `shared-context`:
    a line is one template; write its line breaks as `\\n` (unescaped here) and its trailing
    newline is dropped.
    """
    if layout not in LAYOUTS:
        raise RegistryError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}")
    lines = read_prompt_lines(valid_path(path, "the prompts file"))
    if first is not None:
        if first < 1:
            raise RegistryError(f"--first must be at least 1 (got {first})")
        if first > len(lines):
            raise RegistryError(f"{path}: --first {first} asks for more prompts than the file's {len(lines)} lines")
        lines = lines[:first]
    for i, line in enumerate(lines):
        if not line.strip():
            raise RegistryError(f"{path}, line {i + 1}: empty line; a prompts file holds one prompt per line")
    if layout == Layout.SHARED_CONTEXT:
        lines = [line.rstrip("\n").replace("\\n", "\n") for line in lines]
    return set_prompts(session, set_name, layout, lines, scale=scale)


def prompt_sets(session: Session) -> list[tuple[str, str, int, int, int]]:
    """(set name, layout, scale, active prompts, all versions) for every set."""
    rows = session.scalars(sa.select(Prompt).order_by(Prompt.set_name, Prompt.position, Prompt.id)).all()
    out: dict[str, list[Prompt]] = {}
    for r in rows:
        out.setdefault(r.set_name, []).append(r)
    result = []
    for name, prompts in out.items():
        active = [p for p in prompts if p.active]
        ref = active[0] if active else prompts[-1]
        result.append((name, ref.layout, ref.scale, len(active), len(prompts)))
    return result


# ---------------------------------------------------------------------------------------------
# Models


def add_model(session: Session, name: str, source: str, dtype: str | None = None,
              weight: float | None = None, max_tokens: int | None = None) -> LLM:
    """Register (or re-register) model `name` from `source`; returns the active model version.

    Same weights and dtype as the active version → no new row (weight/max_tokens updated if given).
    Other weights or dtype → a new version (or a re-activated old one); the others are deactivated.
    """
    from selectit.scoring import loading

    name = valid_name(name, "model")
    if dtype is not None and dtype not in loading.DTYPES:
        raise RegistryError(f"unknown dtype {dtype!r}; choose one of: {', '.join(loading.DTYPES)}")
    if weight is not None and not (_number(weight) and math.isfinite(weight) and weight > 0):
        raise RegistryError(f"--weight must be a positive finite number, e.g. 135e6 (got {weight})")
    if max_tokens is not None and not (_whole(max_tokens) and max_tokens >= MIN_MAX_TOKENS):
        raise RegistryError(f"--max-tokens must be at least {MIN_MAX_TOKENS} tokens (got {max_tokens}); "
                            f"leave it out for the default, {DEFAULT_MAX_TOKENS} capped by the model's own context")
    if max_tokens is not None and max_tokens > MAX_MAX_TOKENS:
        raise RegistryError(f"--max-tokens {max_tokens} is beyond any model's context (at most {MAX_MAX_TOKENS})")
    src = loading.resolve_source(valid_path(source, "--source"))
    dtype = dtype or loading.default_dtype()
    fp = _reading(src, loading.fingerprint)
    versions = session.scalars(sa.select(LLM).where(LLM.name == name).order_by(LLM.id)).all()
    same = next((v for v in versions if v.fingerprint == fp and v.dtype == dtype), None)
    config = _reading(src, loading.load_config)
    declared = getattr(config, "max_position_embeddings", None)
    if declared is not None and (isinstance(declared, bool) or not isinstance(declared, int)
                                 or not MIN_MAX_TOKENS <= declared):
        raise RegistryError(f"{source}: the model's config gives max_position_embeddings {declared!r}, not a context "
                            f"length of at least {MIN_MAX_TOKENS} tokens; fix its config.json")
    ctx_len = declared or DEFAULT_MAX_TOKENS
    if max_tokens is not None and declared is not None and max_tokens > declared:
        raise RegistryError(f"--max-tokens {max_tokens} is beyond the context of model {name!r} ({declared} tokens); "
                            f"give at most {declared}")
    if same is None:
        tokenizer = _reading(src, loading.load_tokenizer)
        labels = {layout: label_token_ids(tokenizer, ctx, f"model {name!r}, layout {layout}: ")
                  for layout, ctx in LABEL_CONTEXT.items()}
        # Aliases and hub ids are kept as typed (they resolve on any worker); paths are made absolute.
        stored = src.given if (src.given in loading.ALIASES or not Path(src.given).expanduser().exists()) else str(src.path)
        same = LLM(name=name, source=stored,
                   fingerprint=fp, dtype=dtype, n_params=_reading(src, loading.count_params), weight=weight,
                   label_ids=labels, max_tokens=min(max_tokens or DEFAULT_MAX_TOKENS, ctx_len), active=True)
        session.add(same)
    else:
        if weight is not None:
            same.weight = weight
        if max_tokens is not None:
            same.max_tokens = max_tokens
    return _activate(session, versions, same)


#: The dtype column of a served model: the server's own choice, not selectit's.
SERVED_DTYPE = "server"


def add_served_model(session: Session, name: str, endpoint: str, served_model: str, tokenizer: str | None = None,
                     api_key_env: str | None = None, weight: float | None = None, n_params: int | None = None,
                     max_tokens: int | None = None, chat: bool = False) -> LLM:
    """Register (or re-register) model `name` served at an OpenAI-compatible `endpoint`.

    The version's fingerprint is the served model id plus what the server's `/v1/models` says of
    it, so another deployment is another version (same rules as `add_model`). The tokenizer
    (`tokenizer`, by default the served model id as a hub id in the local cache) gives the label
    ids, truncation and token counts exactly as for a local model. `api_key_env` names the
    environment variable holding the key: it is read now and at run time, never stored. θ is
    `weight`, else `n_params`; with neither the model cannot join the model-level fusion.
    `chat`: the server is asked through /chat/completions (the prompt as one user message, top-k
    only); another layout, so another version (dtype `server-chat`) whose cells never mix with
    the completions version's.
    """
    from selectit.scoring import loading
    from selectit.scoring.openai_engine import (
        CHAT_DTYPE,
        endpoint_fingerprint,
        normalize_endpoint,
        read_model_listing,
    )

    name = valid_name(name, "model")
    if not served_model.strip():
        raise RegistryError("--served-model is empty; give the model id the server serves (see its /v1/models)")
    if weight is not None and not (_number(weight) and math.isfinite(weight) and weight > 0):
        raise RegistryError(f"--weight must be a positive finite number, e.g. 135e6 (got {weight})")
    if n_params is not None and not (_whole(n_params) and 1 <= n_params <= MAX_PARAMS):
        raise RegistryError(f"--params must be a positive parameter count below 2**63, e.g. 135000000 "
                            f"(got {n_params})")
    if max_tokens is not None and not (_whole(max_tokens) and max_tokens >= MIN_MAX_TOKENS):
        raise RegistryError(f"--max-tokens must be at least {MIN_MAX_TOKENS} tokens (got {max_tokens})")
    if api_key_env is not None and not api_key_env.strip():
        raise RegistryError("--api-key-env is empty; give the name of the environment variable holding the key")
    ep = Endpoint(normalize_endpoint(endpoint), served_model, api_key_env)
    ep.api_key()  # a key named but not set fails before the server is asked
    listing = read_model_listing(ep)
    fp = endpoint_fingerprint(served_model, listing, chat=chat)
    dtype = CHAT_DTYPE if chat else SERVED_DTYPE
    src = loading.resolve_source(tokenizer or served_model)
    versions = session.scalars(sa.select(LLM).where(LLM.name == name).order_by(LLM.id)).all()
    same = next((v for v in versions if v.fingerprint == fp and v.dtype == dtype), None)
    if same is None:
        tok = _reading(src, loading.load_tokenizer)
        labels = {layout: label_token_ids(tok, ctx, f"model {name!r}, layout {layout}: ")
                  for layout, ctx in LABEL_CONTEXT.items()}
        # The server's context, less one position for the label token it reads.
        served_len = _served_context(listing, ep) - 1
        limit = min(max_tokens or DEFAULT_MAX_TOKENS, served_len if served_len > 0 else DEFAULT_MAX_TOKENS)
        if limit < MIN_MAX_TOKENS:
            raise RegistryError(f"{ep.host}: the server's context ({served_len + 1} tokens) cannot hold a rating prompt")
        stored = src.given if (src.given in loading.ALIASES or not Path(src.given).expanduser().exists()) else str(src.path)
        same = LLM(name=name, source=stored, fingerprint=fp, dtype=dtype, n_params=n_params, weight=weight,
                   label_ids=labels, max_tokens=limit, active=True, endpoint=ep.url, served_model=served_model,
                   api_key_env=api_key_env)
        session.add(same)
    else:
        if weight is not None:
            same.weight = weight
        if n_params is not None:
            same.n_params = n_params
        if max_tokens is not None:
            same.max_tokens = max_tokens
        same.api_key_env = api_key_env
    return _activate(session, versions, same)


def _served_context(listing: dict[str, Any], ep: Endpoint) -> int:
    """`max_model_len` of a `/v1/models` entry, 0 when the server gives none; anything but a
    whole number of tokens (a text, a list, 1e400) is the server's error, said as one."""
    value = listing.get("max_model_len")
    if value is None:
        return 0
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)  # 4096.0: a JSON writer's way of writing 4096
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        shown = redact(repr(value), ep.api_key(), 40)  # the server's text: the key masked, then cut
        raise RegistryError(f"{ep.host}: the server's /v1/models gives max_model_len {shown}, not a number of "
                            f"tokens; fix the context length in the server's configuration")
    return value


def _activate(session: Session, versions: list[LLM], active: LLM) -> LLM:
    """Make `active` the one active version of its model (the others keep their scores for audit)."""
    for v in versions:
        v.active = False
    active.active = True
    session.flush()
    return active


def _number(value: object) -> bool:
    """A real number, not a bool or a string: the Python API's arguments are not parsed by click."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _whole(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _reading(src: Any, read: Any) -> Any:
    """`read(src)`, with any failure to parse the files turned into one clear error."""
    try:
        return read(src)
    except SelectitError:
        raise
    except Exception as exc:  # noqa: BLE001 - gguf, safetensors and transformers raise many kinds
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RegistryError(
            f"{src.given}: cannot read the model ({reason}); give a valid .gguf file or a Hugging Face model "
            f"directory (config.json, tokenizer and *.safetensors)"
        ) from exc


def find_model(session: Session, name: str) -> LLM:
    """The active version of model `name`."""
    from selectit.store import lookups

    return lookups.active_model(session, name)


def list_models(session: Session) -> list[LLM]:
    return list(session.scalars(sa.select(LLM).order_by(LLM.name, LLM.id)))
