"""The `selectit` command line: a thin click layer over `selectit.Store`.

Every command parses its options, calls one `Store` method and prints what it returns; its help
ends with a runnable example, and errors say what to do next and exit 1. The commands live by
topic in `data`, `scoring`, `ranking` and `audit`; `base` holds the group, the output and error handling,
`options` the options several commands share.
"""

from __future__ import annotations

from selectit.cli import audit, data, ranking, scoring  # noqa: F401 - importing registers the commands
from selectit.cli.base import main


def run() -> None:  # pragma: no cover - console entry point
    main(prog_name="selectit")


__all__ = ["main", "run"]
