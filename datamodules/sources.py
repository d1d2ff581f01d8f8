"""Where a task's files come from: the data folder (argument, then ``$ESSSM_DATA/<task>``, then
``./data/<task>``), the error that names a missing folder, its files and how to get them, the
LRA release download and the local Hugging Face cache."""

from __future__ import annotations

import contextlib
import os
import tarfile
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from datamodules.archives import tar_files, write_member

if TYPE_CHECKING:
    import datasets

DATA_ENV_VAR = "ESSSM_DATA"
LRA_RELEASE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
LRA_RELEASE_ROOT = "lra_release/lra_release"  # the archive folder LRA's own dataset_setup.sh reads tasks from


class DataFolderError(FileNotFoundError):
    """A data folder is missing or lacks the files a datamodule reads."""


def resolve_data_dir(data_dir: str | None, task_folder: str) -> Path:
    """The data folder: ``data_dir`` if given, else ``$ESSSM_DATA/<task>``, else ``./data/<task>``."""
    if data_dir:
        return Path(data_dir).expanduser().absolute()
    root = os.environ.get(DATA_ENV_VAR)
    return ((Path(root).expanduser() if root else Path("data")) / task_folder).absolute()


def first_folder_with(candidates: Sequence[Path], expected: Sequence[str]) -> Path | None:
    """The first candidate folder that holds every expected relative path, or None."""
    for folder in candidates:
        if all((folder / name).exists() for name in expected):
            return folder
    return None


def missing_data_error(
    task: str, data_dir: Path, expected: Sequence[str], how_to_get: str, subfolders: Sequence[str] = ()
) -> DataFolderError:
    """The error for a data folder without the expected files: names folder, files and the fix."""
    missing = [name for name in expected if not (data_dir / name).exists()]
    state = "does not exist" if not data_dir.exists() else f"lacks {', '.join(missing)}"
    where = f" (or in its subfolder {' or '.join(subfolders)})" if subfolders else ""
    return DataFolderError(
        f"{task} data folder {data_dir} {state}.\n"
        f"Expected files there{where}: {', '.join(expected)}.\n"
        f"How to get them: {how_to_get}\n"
        f"(Set the folder with data_dir=... or the {DATA_ENV_VAR} environment variable.)"
    )


@contextlib.contextmanager
def lra_release(url: str = LRA_RELEASE_URL) -> Iterator[tarfile.TarFile]:
    """The streamed LRA release archive. It is several GB (every LRA task): read it once, front
    to back, with datamodules.archives, which keeps on disk only what the caller selects."""
    with urllib.request.urlopen(url) as stream, tarfile.open(fileobj=stream, mode="r|gz") as archive:
        yield archive


def download_lra_files(data_dir: Path, folder: str, names: Sequence[str], url: str = LRA_RELEASE_URL) -> None:
    """Write the LRA release archive's ``<LRA_RELEASE_ROOT>/<folder>/<name>`` files into data_dir."""
    data_dir.mkdir(parents=True, exist_ok=True)
    missing = {f"{LRA_RELEASE_ROOT}/{folder}/{name}": name for name in names}
    with lra_release(url) as archive:
        # Selecting a member pops it from `missing`: each is written once, and the stream stops early.
        for target, file in tar_files(archive, data_dir, url, lambda path: missing.pop(path, None)):
            write_member(target, file)
            if not missing:
                break
    os.sync()
    if missing:
        raise DataFolderError(f"The archive {url} has no member {', '.join(sorted(missing))}.")


def load_hf_cache(name: str) -> datasets.DatasetDict | None:
    """The cached Hugging Face DatasetDict `name` when HF_HUB_OFFLINE is set, else None.

    Offline mode is required so that setup can never start a download.
    """
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:
        return None
    try:
        return datasets.load_dataset(name)
    except (ConnectionError, FileNotFoundError, ValueError):
        return None
