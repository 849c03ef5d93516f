"""The one way selectit writes a file: every export and report file (data, card, dataset_info.json,
plots, tables, index.html) goes through a `Writer`.

Rules (the README's Safety section states them for users):

- every target is checked before anything is written (`Writer.plan`), then each file is written to
  a temporary name beside it and all are renamed into place at the end (`Writer.commit`): an error
  leaves every target as it was;
- never the curation database's own files (database, WAL, shared memory, journal), under any name,
  symlink or hard link;
- only regular files: a directory, FIFO, socket or device in the way is refused;
- an existing file is replaced only when the user named it (``--out FILE``; followed through a
  symlink, the link stays; not an SQLite database or an ingested source file), when ``--overwrite`` is given, or when the manifest of its directory
  (`MANIFEST`) records that selectit wrote it for the same entry and it is unchanged since;
  a symlink the user did not name is never written through;
- a shared index (LLaMA-Factory's ``dataset_info.json``) is rewritten as a whole, keeping its other
  entries;
- nothing is ever deleted but a file the manifest records as written by selectit for the same entry
  and unchanged since.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> w = Writer(entry="demo")
    >>> _ = w.plan(d / "a.txt")
    >>> _ = w.stage_text(d / "a.txt", "hello\\n")
    >>> w.commit()
    >>> (d / "a.txt").read_text()
    'hello\\n'
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selectit.errors import SelectitError

#: The file in each directory selectit writes into that lists what it wrote there, and for which entry.
MANIFEST = ".selectit-manifest.json"


class WriteError(SelectitError):
    """A file that selectit must not, or cannot, write."""


class ExportError(WriteError):
    """An export that cannot be written as asked."""


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """file name → {"entry", "sha256"} of what selectit wrote in `directory` ({} when none)."""
    path = directory / MANIFEST
    try:
        st = path.lstat()
    except FileNotFoundError:
        return {}
    if not stat.S_ISREG(st.st_mode):
        raise WriteError(f"{path} is not a regular file; selectit keeps its list of written files there: remove it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
        assert isinstance(files, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise WriteError(f"{path} is not a selectit manifest (unreadable JSON); remove it") from None
    return {str(k): v for k, v in files.items() if isinstance(v, dict)}


def owned(path: Path, entry: str, manifest: dict[str, dict[str, Any]] | None = None) -> bool:
    """True when `path` is a regular file the manifest of its directory records as written by
    selectit for `entry`, and it is unchanged since (same sha256)."""
    manifest = read_manifest(path.parent) if manifest is None else manifest
    record = manifest.get(path.name)
    if record is None or record.get("entry") != entry:
        return False
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
    except FileNotFoundError:
        return False
    return record.get("sha256") == sha256_file(path)


def _is_sqlite(path: Path) -> bool:
    """An SQLite database file (its header): no export or report data looks like one."""
    try:
        with open(path, "rb") as fh:
            return fh.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _same_file(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)  # a hard link
    except OSError:
        return False


@dataclass
class _Target:
    given: Path  # as the command names it
    real: Path  # the file that is replaced (a named symlink's destination)
    mode: int  # the mode the new file gets
    staged: Path | None = None
    record: bool = True  # listed in the directory's manifest


class Writer:
    """Checks every target first, stages each file beside it, renames them all at the end.

    `protect`: files never written (the store's own, resolved by the caller); `entry`: what the
    files are written for (an export's entry name, ``report``), as the manifest records it;
    `overwrite`: replace existing files the user did not name (never a protected one);
    `refuse_named`: (path, reason) — files that even a named target may not replace without
    `overwrite` (the dataset's own ingested source).
    """

    def __init__(self, *, entry: str, protect: Iterable[Path] = (), overwrite: bool = False,
                 refuse_named: Callable[[Path], str | None] | None = None) -> None:
        self.entry = entry
        self.protect = [Path(os.path.realpath(p)) for p in protect]
        self.overwrite = overwrite
        self.refuse_named = refuse_named
        self.targets: dict[Path, _Target] = {}
        self.stale: list[Path] = []
        self._manifests: dict[Path, dict[str, dict[str, Any]]] = {}
        self._given: dict[Path, Path] = {}
        self.new_dirs: set[Path] = set()

    # -- checks ----------------------------------------------------------------------------
    def manifest(self, directory: Path) -> dict[str, dict[str, Any]]:
        key = Path(os.path.realpath(directory))
        if key not in self._manifests:
            self._manifests[key] = read_manifest(key) if key.is_dir() else {}
        return self._manifests[key]

    def check_protected(self, path: Path, shown: Path | None = None) -> None:
        for guarded in self.protect:
            if _same_file(path, guarded):
                raise WriteError(f"{shown or path} is the curation database ({guarded}); selectit never writes "
                                 f"over it. Choose another --out")

    def plan(self, path: Path, *, named: bool = False, shared: bool = False, record: bool = True) -> Path:
        """Check that `path` may be written; returns the file that will be replaced.

        `named`: the user gave this path (--out FILE); `shared`: an index rewritten keeping its
        other entries (dataset_info.json); `record`: list it in the directory's manifest.
        """
        path = Path(path)
        parent = Path(os.path.realpath(path.parent))
        try:
            st = path.lstat()
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise WriteError(f"cannot read {path}: {exc.strerror}") from None
        if st is not None and stat.S_ISLNK(st.st_mode) and not named:
            raise WriteError(f"{path} is a symbolic link; selectit writes only through links named by --out. "
                             f"Remove it or choose another --out")
        real = Path(os.path.realpath(path)) if named else parent / path.name
        self.check_protected(real, path)
        if real in self.targets:
            raise WriteError(f"{path} would be written twice by one command; choose another --out")
        try:
            rst = real.stat()
        except FileNotFoundError:
            rst = None
        except OSError as exc:
            raise WriteError(f"cannot read {path}: {exc.strerror}") from None
        if rst is not None and not stat.S_ISREG(rst.st_mode):
            raise WriteError(f"{path} is not a regular file (a directory, FIFO, socket or device); selectit "
                             f"writes regular files only: choose another --out")
        if rst is not None and not self.overwrite and not shared:
            if named:
                reason = "a SQLite database" if _is_sqlite(real) else (
                    self.refuse_named(real) if self.refuse_named else None)
                if reason:
                    raise WriteError(f"{path} is {reason}; pass --overwrite to replace it, or choose another --out")
            elif not owned(real, self.entry, self.manifest(real.parent)):
                raise WriteError(f"{path} exists and was not written by selectit for {self.entry!r} (or changed "
                                 f"since); remove it, choose another --out, or pass --overwrite to replace it")
        if not parent.is_dir() and parent not in self.new_dirs:
            raise WriteError(f"the directory {str(path.parent)!r} does not exist; create it first")
        mode = stat.S_IMODE(rst.st_mode) if rst is not None else 0o666 & ~umask()
        self.targets[real] = _Target(path, real, mode, record=record)
        self._given[Path(path)] = real
        return real

    def new_dir(self, directory: Path) -> Path:
        """A directory this command creates (mode 0777 & ~umask) when it writes the first file into it."""
        directory = Path(directory)
        if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
            raise WriteError(f"{directory} is not a directory; choose another --out")
        real = Path(os.path.realpath(directory))
        if not real.parent.is_dir() and real.parent not in self.new_dirs:
            raise WriteError(f"the directory {str(directory.parent)!r} does not exist; create it first")
        self.new_dirs.add(real)
        return real

    def plan_stale(self, path: Path) -> None:
        """Delete `path` at commit: only when the manifest records it as ours and unchanged."""
        real = Path(os.path.realpath(path.parent)) / path.name
        if real not in self.targets and owned(real, self.entry, self.manifest(real.parent)):
            self.check_protected(real)
            self.stale.append(real)

    # -- staging ---------------------------------------------------------------------------
    def _target(self, path: Path) -> _Target:
        real = self._given.get(Path(path))
        target = self.targets.get(real) if real is not None else None
        if target is None:
            raise WriteError(f"{path} was not checked before writing")  # a programming error, named
        return target

    def stage(self, path: Path, fill: Callable[[Path], Any]) -> Path:
        """Write `path`'s new content to a temporary file beside it with `fill(tmp)`; the temporary path."""
        target = self._target(path)
        target.real.parent.mkdir(parents=True, exist_ok=True)  # a directory this command creates (0777 & ~umask)
        try:
            fd, name = tempfile.mkstemp(prefix=f".{target.real.name}.", suffix=".tmp", dir=target.real.parent)
        except OSError as exc:
            raise WriteError(f"cannot write into {str(target.real.parent)!r}: {exc.strerror}") from None
        os.close(fd)
        target.staged = Path(name)
        try:
            fill(target.staged)
            os.chmod(target.staged, target.mode)
            with open(target.staged, "rb+") as fh:
                os.fsync(fh.fileno())
        except OSError as exc:
            self.abort()
            raise WriteError(f"cannot write {target.given}: {exc.strerror or exc}; nothing was replaced") from None
        except BaseException:
            self.abort()
            raise
        return target.staged

    def stage_text(self, path: Path, text: str) -> Path:
        return self.stage(path, lambda tmp: tmp.write_text(text, encoding="utf-8", newline=""))

    def stage_bytes(self, path: Path, data: bytes) -> Path:
        return self.stage(path, lambda tmp: tmp.write_bytes(data))

    def abort(self) -> None:
        for target in self.targets.values():
            if target.staged is not None:
                target.staged.unlink(missing_ok=True)
                target.staged = None

    # -- commit ----------------------------------------------------------------------------
    def commit(self) -> None:
        """Rename every staged file into place, delete stale own files, update the manifests."""
        staged = [t for t in self.targets.values() if t.staged is not None]
        directories = {t.real.parent for t in staged if t.record} | {p.parent for p in self.stale}
        manifests: dict[Path, Path] = {}
        try:
            for directory in directories:  # the manifests are staged like any other file
                files = dict(self.manifest(directory))
                for t in staged:
                    if t.real.parent == directory and t.record:
                        files[t.real.name] = {"entry": self.entry, "sha256": sha256_file(t.staged)}  # type: ignore[arg-type]
                for p in self.stale:
                    if p.parent == directory:
                        files.pop(p.name, None)
                path = directory / MANIFEST
                if path.exists() and not path.is_file():
                    raise WriteError(f"{path} is not a regular file; remove it")
                self.check_protected(path)
                fd, name = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=directory)
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump({"files": dict(sorted(files.items()))}, fh, indent=1)
                os.chmod(name, 0o666 & ~umask())
                manifests[path] = Path(name)
            for t in staged:
                os.replace(t.staged, t.real)  # type: ignore[arg-type]
                t.staged = None
            for p in self.stale:
                p.unlink(missing_ok=True)
            for path, tmp in manifests.items():
                os.replace(tmp, path)
        except OSError as exc:
            raise WriteError(f"cannot write into {exc.filename or 'the output directory'}: {exc.strerror}") from None
        finally:
            for tmp in manifests.values():
                tmp.unlink(missing_ok=True)
            self.abort()
