"""`selectit export` (and the criteria of rank/select/export): files are written, never destroyed.

An export refuses the store's own files, links to them, FIFOs and devices; it writes through a
symlink and keeps the replaced file's mode; a non-finite --min-score, and a --random share outside
(0, 1], are refused (naming the option given) before anything is read or written.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from guards import (  # noqa: F401 - seeded and sqlite_seeded are fixtures
    assert_one_error,
    file_digest,
    invoke,
    seeded,
    snapshot,
    sqlite_path,
    sqlite_seeded,
)


# --------------------------------------------------------------------------- exports cannot destroy
def export(db_url: str, out: Path | str, *extra: str):
    return invoke("--db", db_url, "export", "--dataset", "d", "--prompt-set", "s", "--top-n", "2", "--out", out,
                  *extra)


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm"])
def test_export_refuses_the_store_files(sqlite_seeded: str, suffix: str) -> None:
    store_file = sqlite_path(sqlite_seeded)
    target = Path(str(store_file) + suffix)
    target.touch()
    digest = file_digest(store_file)
    before = snapshot(sqlite_seeded)
    assert_one_error(export(sqlite_seeded, target), "curation database")
    assert file_digest(store_file) == digest
    assert snapshot(sqlite_seeded) == before


def test_export_refuses_a_link_to_the_store(sqlite_seeded: str, tmp_path: Path) -> None:
    store_file = sqlite_path(sqlite_seeded)
    link = tmp_path / "innocent.json"
    link.symlink_to(store_file)
    digest = file_digest(store_file)
    assert_one_error(export(sqlite_seeded, link), "curation database")
    assert file_digest(store_file) == digest and link.is_symlink()


def test_export_refuses_fifos_and_devices(sqlite_seeded: str, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    assert_one_error(export(sqlite_seeded, fifo), "not a regular file")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    device = tmp_path / "null"
    try:
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a private /dev/null
    except (PermissionError, OSError):
        device = Path("/dev/null")  # only read here: the refusal happens before any write
    assert_one_error(export(sqlite_seeded, device), "not a regular file")
    assert stat.S_ISCHR(device.lstat().st_mode)


def test_export_writes_through_a_symlink_and_keeps_modes(sqlite_seeded: str, tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old")
    real.chmod(0o640)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    result = export(sqlite_seeded, link)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and len(json.loads(real.read_text())) == 2
    assert stat.S_IMODE(real.stat().st_mode) == 0o640  # the replaced file keeps its mode
    old = os.umask(0o027)
    try:
        assert export(sqlite_seeded, tmp_path / "new.json").exit_code == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640  # 0666 & ~umask


# ------------------------------------------------------------------------------ non-finite criteria
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e309"])
@pytest.mark.parametrize("command", ["rank", "select", "export"])
def test_min_score_must_be_finite(seeded: str, tmp_path: Path, command: str, value: str) -> None:
    args = {"rank": ["rank"], "select": ["select", "v1"], "export": ["export", "--out", tmp_path / "o.json"]}[command]
    before = snapshot(seeded)
    result = invoke("--db", seeded, *args, "--dataset", "d", "--prompt-set", "s", f"--min-score={value}")
    assert_one_error(result, "--min-score", "finite")
    assert snapshot(seeded) == before and not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2", "nan", "inf"])
def test_a_bad_random_share_names_random(seeded: str, value: str) -> None:
    before = snapshot(seeded)
    result = invoke("--db", seeded, "select", "r1", "--dataset", "d", "--prompt-set", "s", f"--random={value}")
    line = assert_one_error(result, "--random must be a share in (0, 1]", f"got {float(value)!r}")
    assert "--top" not in line  # an option the user never gave
    assert snapshot(seeded) == before
