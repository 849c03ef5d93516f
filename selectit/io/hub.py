"""Hugging Face `datasets` for ingest, offline: saved ``save_to_disk`` directories and Hub datasets
read from the local Hugging Face cache only (nothing is downloaded at run time).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selectit.errors import SelectitError
from selectit.io.records import IngestError


def datasets_offline():  # noqa: ANN201 - the `datasets` module
    """Import Hugging Face `datasets` with the hub switched off: nothing is fetched at run time."""
    import os

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import datasets
    except ImportError as exc:
        raise SelectitError("this needs the Hugging Face `datasets` library; install it with "
                            "`pip install 'selectit[hf]'` (or `pip install datasets`)") from exc
    datasets.disable_progress_bars()
    return datasets


def _check_split(where: str | Path, split: str, splits: Sequence[str]) -> None:
    if split not in splits:
        raise IngestError(f"{where} has no split {split!r} (splits: {', '.join(splits)}). Nothing was ingested; "
                          f"choose one with --split.")


def hf_dataset(path: Path, split: str | None):  # noqa: ANN201 - datasets.Dataset
    """The `datasets.Dataset` saved at `path` (a `DatasetDict` needs `split`), loaded offline."""
    hf = datasets_offline()
    if (path / "dataset_dict.json").exists():
        splits = sorted(json.loads((path / "dataset_dict.json").read_text())["splits"])
        if split is None and len(splits) == 1:
            split = splits[0]
        if split is None:
            raise IngestError(f"{path} holds a DatasetDict with the splits {', '.join(splits)}; choose one with "
                              f"--split (e.g. --split {'train' if 'train' in splits else splits[0]}). Nothing was ingested.")
        _check_split(path, split, splits)
        return hf.load_from_disk(str(path / split))
    if split is not None:
        raise IngestError(f"{path} is a single Dataset, not a DatasetDict; leave --split out. Nothing was ingested.")
    return hf.load_from_disk(str(path))


#: A Hugging Face Hub dataset id, ``owner/name`` (the hub's repo name rules, loosely).
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def hub_id(path: str | Path) -> str | None:
    """`path` as a Hub dataset id when it names no file and reads like ``owner/name``, else None.

    >>> hub_id("tatsu-lab/alpaca"), hub_id("alpaca.json"), hub_id("../x/y")
    ('tatsu-lab/alpaca', None, None)
    """
    text = str(path)
    if ".." in text or not _HUB_ID.fullmatch(text) or Path(text).exists():
        return None
    return text


@contextmanager
def _hub_offline(hf: Any) -> Iterator[None]:
    """Offline for this call even when `datasets` was imported with the hub on (it reads the
    environment once, at import), and without its "using the cached version" warnings."""
    import huggingface_hub.constants as hub_constants

    saved = hf.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE, hf.logging.get_verbosity()
    hf.config.HF_HUB_OFFLINE = hub_constants.HF_HUB_OFFLINE = True
    hf.logging.set_verbosity_error()
    try:
        yield
    finally:
        hf.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved[:2]
        hf.logging.set_verbosity(saved[2])


def hub_dataset(repo_id: str, split: str | None) -> tuple[Any, Path]:
    """(the `datasets.Dataset` of `split`, the local directory it was read from) for Hub dataset
    `repo_id`, from the local Hugging Face cache only: the hub cache's snapshot (what
    `hf download --repo-type dataset` or an earlier `load_dataset` left, ``refs/main`` → its
    commit), else the `datasets` cache of an earlier `load_dataset(repo_id)`. HF_HOME,
    HF_HUB_CACHE and HF_DATASETS_CACHE are respected. `split` defaults to the only split, else
    ``train``."""
    try:
        hf = datasets_offline()
    except SelectitError:
        raise IngestError(f"{repo_id}: no such file, and reading it as a Hugging Face Hub dataset from the local "
                          f"cache needs the `datasets` library. Nothing was ingested; install it with "
                          f"`pip install 'selectit[hf]'`, or give a file.") from None
    import huggingface_hub
    import huggingface_hub.constants as hub_constants
    from datasets.naming import camelcase_to_snakecase

    owner, name = repo_id.split("/")
    datasets_cache = Path(hf.config.HF_DATASETS_CACHE)
    candidates: list[tuple[str, Path]] = []
    try:
        snapshot = huggingface_hub.snapshot_download(repo_id, repo_type="dataset", local_files_only=True)
        candidates.append((snapshot, Path(snapshot)))
    except Exception:  # noqa: BLE001 - LocalEntryNotFoundError, or an id the hub library refuses
        pass
    prepared = datasets_cache / f"{owner}___{camelcase_to_snakecase(name)}"
    if prepared.is_dir():
        candidates.append((repo_id, prepared))
    if not candidates:
        raise IngestError(
            f"{repo_id} is not a file and not a dataset in the local Hugging Face cache (HF_HOME="
            f"{hub_constants.HF_HOME}; looked in {hub_constants.HF_HUB_CACHE} and {datasets_cache}). Nothing was "
            f"ingested; download it first where there is network, e.g. `hf download --repo-type dataset {repo_id}` "
            f"(`huggingface-cli download` with older huggingface_hub), copy the cache here, or give a file.")
    failure: Exception | None = None
    for source, local in candidates:  # the first that loads; a snapshot without data falls through
        try:
            with _hub_offline(hf):
                splits = hf.load_dataset(source)
            break
        except Exception as exc:  # noqa: BLE001 - datasets raises many kinds
            failure = exc
    else:
        raise IngestError(f"{repo_id}: found in the local Hugging Face cache ({candidates[0][1]}) but cannot read it "
                          f"offline ({type(failure).__name__}: {failure}). Nothing was ingested; download it again "
                          f"where there is network, or give a file.")
    names = sorted(splits)
    if split is None:
        split = names[0] if len(names) == 1 else "train" if "train" in names else None
        if split is None:
            raise IngestError(f"{repo_id} has the splits {', '.join(names)} and none is called train; choose one "
                              f"with --split (e.g. --split {names[0]}). Nothing was ingested.")
    _check_split(repo_id, split, names)
    return splits[split], local
