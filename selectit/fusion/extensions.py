"""DuckDB's `sqlite` and `postgres` extensions, loaded from the binaries that the
`duckdb-extension-*` PyPI packages carry (never downloaded), through links in a directory
private to this user."""

from __future__ import annotations

import atexit
import os
import shutil
import stat
import tempfile
from pathlib import Path

import duckdb

from selectit.fusion.errors import FusionError

_EXTENSION_DIR: Path | None = None


def extension_path(name: str) -> Path:
    """The extension binary shipped by the `duckdb-extension-<name>` package, as DuckDB wants it.

    DuckDB derives the entry point from the file name (`sqlite_scanner_duckdb_cpp_init`), but
    the package ships `sqlite.duckdb_extension`; a link named `sqlite_scanner.duckdb_extension`
    in a directory private to this user makes `LOAD` find it.
    """
    global _EXTENSION_DIR
    import importlib

    try:
        package = importlib.import_module(f"duckdb_extension_{name}")
    except ImportError as exc:
        raise FusionError(
            f"the DuckDB {name} extension is not installed; run `pip install duckdb-extension-{name}=={duckdb.__version__}`"
        ) from exc
    found = sorted(Path(package.__file__).parent.glob(f"extensions/v{duckdb.__version__}/{name}.duckdb_extension"))
    if not found:
        raise FusionError(
            f"duckdb-extension-{name} carries no binary for DuckDB {duckdb.__version__}; "
            f"install the matching version: `pip install duckdb-extension-{name}=={duckdb.__version__}`"
        )
    if _EXTENSION_DIR is None:
        _EXTENSION_DIR = private_dir()
    target = _EXTENSION_DIR / f"{name}_scanner.duckdb_extension"
    if not (target.is_symlink() and target.resolve() == found[0].resolve()):
        tmp = _EXTENSION_DIR / f".{name}.{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(found[0])
        os.replace(tmp, target)  # atomic: concurrent processes never see a half-made link
    return target


def private_dir() -> Path:
    """A directory only this user can write, reused across runs (nothing left behind per run).

    Falls back to a fresh temporary directory when the shared name is not ours and private.
    """
    base = Path(tempfile.gettempdir()) / f"selectit-duckdb-{os.getuid()}-{duckdb.__version__}"
    try:
        base.mkdir(mode=0o700)
    except FileExistsError:
        pass
    st = base.lstat()
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077:
        return base
    fresh = Path(tempfile.mkdtemp(prefix="selectit-duckdb-"))
    atexit.register(shutil.rmtree, fresh, ignore_errors=True)
    return fresh
