"""Errors the user can act on. The CLI prints their message and exits 1, with no traceback."""


class SelectitError(Exception):
    """Base class: the message says what is wrong, where, and what to do next."""


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
