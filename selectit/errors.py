"""Errors the user can act on, named after the condition. The CLI prints their message as one
`Error: …` line and exits 1; the Python API raises them as they are, with the same message.

    >>> try:
    ...     raise NoSuchDataset.named("alpaca", ["dolly"])
    ... except SelectitError as exc:
    ...     print(exc)
    no dataset named 'alpaca' (datasets: dolly); ingest one with `selectit ingest FILE --dataset alpaca`
"""

from __future__ import annotations

from collections.abc import Iterable


class SelectitError(Exception):
    """Base class: the message says what is wrong, where, and what to do next."""


class BadInput(SelectitError):
    """A value given by the user (an option, a name, a file's content) that cannot be used."""


class FusionError(SelectitError):
    """A ranking, selection or export request that cannot be served as asked."""


class NotFound(SelectitError, LookupError):
    """A named thing of the store does not exist."""


def _known(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"


class NoSuchDataset(NotFound):
    @classmethod
    def named(cls, name: str, known: Iterable[str]) -> NoSuchDataset:
        return cls(f"no dataset named {name!r} (datasets: {_known(known)}); "
                   f"ingest one with `selectit ingest FILE --dataset {name}`")


class NoSuchModel(NotFound):
    @classmethod
    def named(cls, names: str | Iterable[str], known: Iterable[str]) -> NoSuchModel:
        names = [names] if isinstance(names, str) else list(names)
        hint = names[0] if len(names) == 1 else "NAME"
        return cls(f"no active model named {', '.join(map(repr, names))} (models: {_known(known)}). "
                   f"Run `selectit model add {hint} --source DIR|FILE.gguf` first.")

    @classmethod
    def none_registered(cls) -> NoSuchModel:
        return cls("no model is registered. Run `selectit model add NAME --source DIR|FILE.gguf` first.")


class NoSuchSelection(NotFound):
    @classmethod
    def named(cls, name: str, known: Iterable[str]) -> NoSuchSelection:
        return cls(f"no selection named {name!r} (selections: {_known(known)}); "
                   f"make one with `selectit select {name} --dataset D`")


class ModelLoadError(SelectitError):
    """A model version's scoring engine cannot be loaded or configured (a missing API key, a server
    that refuses, redirects or does not answer, a tokenizer that cannot be read). It is the model's
    fault, not its cells': no job was claimed and no cell charged an attempt."""

    @classmethod
    def of(cls, name: str, exc: BaseException) -> ModelLoadError:
        why = str(exc) if isinstance(exc, SelectitError) else f"{type(exc).__name__}: {exc}"
        return cls(f"cannot load model {name}: {why}. Nothing was claimed and no cell was charged an attempt; "
                   f"fix it and run the command again")


#: The extra that installs each optional top-level module (pyproject.toml's optional-dependencies).
EXTRAS = {
    "matplotlib": "report", "pandas": "report", "numpy": "report",
    "datasets": "hf",
    "flower": "fleet",
    "vllm": "vllm",
    "torch": "scoring", "transformers": "scoring", "accelerate": "scoring", "gguf": "scoring",
    "safetensors": "scoring",
}


class MissingExtra(SelectitError):
    """An optional dependency is not installed: the message names the extra that installs it."""


def missing_extra(exc: ImportError) -> MissingExtra | None:
    """The `MissingExtra` for an import of an optional module that failed, else None.

    >>> str(missing_extra(ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib.pyplot")))
    "this needs matplotlib, which is not installed; install it with `pip install 'selectit[report]'`"
    """
    name = (getattr(exc, "name", None) or "").split(".")[0]
    extra = EXTRAS.get(name)
    if extra is None:
        return None
    return MissingExtra(f"this needs {name}, which is not installed; install it with `pip install 'selectit[{extra}]'`")
