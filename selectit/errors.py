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


class MissingExtra(SelectitError):
    """An optional dependency that a command needs is not installed."""

    @classmethod
    def of(cls, extra: str, module: str, what: str) -> MissingExtra:
        return cls(f"{what} needs {module}, which is not installed: pip install 'selectit[{extra}]'")
