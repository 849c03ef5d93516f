"""Data that ships with selectit: the 999-record Alpaca demo dataset (see README.md here).

    >>> DEMO_DATA.name
    'alpaca_en_demo.json'
"""

from __future__ import annotations

import os
from pathlib import Path

from selectit.errors import BadInput

#: 999 Alpaca-format records (LLaMA-Factory's data/alpaca_en_demo.json, Apache-2.0).
DEMO_DATA = Path(__file__).resolve().parent / "alpaca_en_demo.json"


def write_demo_data(path: str | os.PathLike[str]) -> Path:
    """Copy the demo dataset to `path` (a new file, or a file name inside an existing directory).

    An existing file is never replaced.
    """
    target = Path(path)
    if target.is_dir():
        target = target / DEMO_DATA.name
    try:
        with target.open("xb") as out:  # "x": fails on an existing file, never truncates one
            out.write(DEMO_DATA.read_bytes())
    except FileExistsError:
        raise BadInput(f"{target} already exists; give another path (selectit never replaces a file)") from None
    except OSError as exc:
        raise BadInput(f"cannot write {target}: {exc.strerror or exc}") from None
    return target
