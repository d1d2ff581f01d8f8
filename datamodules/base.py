"""Shared pieces of the task datamodules.

Data folder resolution (argument, then ``$ESSSM_DATA/<task>``, then ``./data/<task>``),
the errors for missing or malformed data, the padding collate that builds the batch
dicts, seeded loaders and the LRA release download all live here, so every task uses
the same code path.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import random
import tarfile
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules.archives import tar_files, write_member

if TYPE_CHECKING:
    import datasets

DATA_ENV_VAR = "ESSSM_DATA"
LRA_RELEASE_URL = "https://storage.googleapis.com/long-range-arena/lra_release.gz"
LRA_RELEASE_ROOT = "lra_release/lra_release"  # the archive folder LRA's own dataset_setup.sh reads tasks from
SPLITS = ("train", "val", "test")


class DataFolderError(FileNotFoundError):
    """A data folder is missing or lacks the files a datamodule reads."""


class MalformedDataError(ValueError):
    """A data file holds a row or value that does not fit its format."""


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


def malformed(path: Path, line: int, problem: str) -> MalformedDataError:
    """The error for a bad row: ``<file>:<line>: <problem>``."""
    return MalformedDataError(f"{path}:{line}: {problem}")


def _range_problem(label: int, num_classes: int) -> str | None:
    return None if 0 <= label < num_classes else f"label {label} is outside 0..{num_classes - 1}"


def parse_label(field: bytes, num_classes: int, path: Path, line: int) -> int:
    """A class label written as an integer ("1", or "1.0" as some releases write it), checked to
    lie in [0, num_classes). "3.7", "inf" and "nan" are refused with the file and line."""
    text = field.decode("utf-8", "replace").strip()
    try:
        value = float(text)
    except ValueError:
        raise malformed(path, line, f"label {text!r} is not a number") from None
    if not math.isfinite(value) or value != int(value):
        raise malformed(path, line, f"label {text!r} is not an integer class id")
    problem = _range_problem(int(value), num_classes)
    if problem:
        raise malformed(path, line, problem)
    return int(value)


def check_labels(labels: Sequence[Any], num_classes: int, source: str | Path) -> np.ndarray:
    """Labels read from a binary source (one array per file), as int64, refusing non-integers
    and values outside [0, num_classes); the error names the file and the entry."""
    array = np.asarray(labels)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise MalformedDataError(f"{source}: labels must be a list of integers; got {array.dtype} {array.shape}")
    for index, label in enumerate(array.tolist()):
        problem = _range_problem(label, num_classes)
        if problem:
            raise MalformedDataError(f"{source}: entry {index}: {problem}")
    return array.astype(np.int64)


def require_nonempty(sequence: np.ndarray, path: str | Path, line: int | None, what: str) -> np.ndarray:
    """`sequence` unchanged, or an error naming the file (and line) when it is empty: a model
    cannot pool over zero steps."""
    if len(sequence) == 0:
        where = f"{path}:{line}" if line is not None else str(path)
        raise MalformedDataError(f"{where}: {what} is empty (every example needs at least one token)")
    return sequence


def iter_tsv_rows(path: Path) -> Iterator[tuple[int, list[bytes]]]:
    """Yield (line number, tab-separated byte fields) for each non-blank line, quoting off.

    Read in binary so only ``\\n`` ends a row (a stray ``\\r`` inside a text stays text),
    and so byte-level tasks get the file's exact bytes.
    """
    with open(path, "rb") as file:
        for line_number, line in enumerate(file, start=1):
            line = line.rstrip(b"\r\n")
            if line:
                yield line_number, line.split(b"\t")


def bytes_to_array(data: bytes, max_len: int) -> np.ndarray:
    """The first ``max_len`` bytes as a uint8 array (ids are byte + 1, added at lookup)."""
    return np.frombuffer(data[:max_len], dtype=np.uint8).copy()


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


class TokenDataset(Dataset):
    """Examples of one or more byte/token sequences with a label.

    ``columns`` maps a batch key ("x", or "x1"/"x2" for pairs) to one uint8 array per
    example; item ids are ``array + id_offset`` (1 for bytes, so id 0 stays padding).
    """

    def __init__(self, columns: dict[str, list[np.ndarray]], labels: Sequence[int], id_offset: int) -> None:
        self.columns = columns
        self.labels = np.asarray(labels, dtype=np.int64)
        self.id_offset = id_offset

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            key: torch.from_numpy(sequences[index].astype(np.int64)) + self.id_offset
            for key, sequences in self.columns.items()
        }
        item["y"] = int(self.labels[index])
        item["index"] = index
        return item


class IndexedSubset(Dataset):
    """A subset whose items carry their position in the subset as "index" (not the parent's)."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[int(self.indices[index])])
        item["index"] = index
        return item


def seeded_split(dataset: Dataset, val_size: int, seed: int) -> tuple[IndexedSubset, IndexedSubset]:
    """Split into (train, val) with a permutation drawn from ``seed``; same seed, same split."""
    size = len(dataset)
    if not 0 < val_size < size:
        raise ValueError(f"val_size must lie in 1..{size - 1} (the split has {size}); got {val_size}")
    order = np.random.default_rng(seed).permutation(size)
    train, val = np.sort(order[val_size:]), np.sort(order[:val_size])
    return IndexedSubset(dataset, train), IndexedSubset(dataset, val)


def mask_key(key: str) -> str:
    """The mask key for a sequence key: "x" -> "mask", "x1" -> "mask1"."""
    return "mask" + key[1:]


def pad_sequences(sequences: Sequence[Tensor], length: int | None = None) -> tuple[Tensor, Tensor]:
    """Right-pad (L_i, ...) tensors with zeros to (B, length, ...); mask (B, length) is True at data.

    ``length`` defaults to the longest sequence in the batch.
    """
    length = length or max(len(sequence) for sequence in sequences)
    first = sequences[0]
    padded = first.new_zeros((len(sequences), length, *first.shape[1:]))
    mask = torch.zeros(len(sequences), length, dtype=torch.bool)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = True
    return padded, mask


def pad_collate(items: Sequence[dict[str, Any]], pad_to: int | None = None) -> dict[str, Tensor]:
    """Batch item dicts: tensors are padded (with a mask per sequence), ints become LongTensors."""
    batch: dict[str, Tensor] = {}
    for key, value in items[0].items():
        values = [item[key] for item in items]
        if isinstance(value, Tensor):
            batch[key], batch[mask_key(key)] = pad_sequences(values, pad_to)
        else:
            batch[key] = torch.tensor(values, dtype=torch.long)
    return batch


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in a loader worker from its torch seed (set by the loader's generator)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def generate_command(
    module: str, summary: str, help_text: str, description: str
) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(parser, generate sub-parser) of `python -m datamodules.<module> generate ...`."""
    parser = argparse.ArgumentParser(prog=f"python -m datamodules.{module}", description=summary)
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser(
        "generate", help=help_text, description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    return parser, generate


class EpochShuffle(Sampler[int]):
    """Training order as a pure function of (seed, epoch).

    Lightning calls `set_epoch` at every epoch start, so a run resumed from a checkpoint sees
    the same order in each epoch as the uninterrupted run (a loader-owned generator would
    restart its stream instead). `start` skips the first indices of the next pass only (a
    mid-epoch resume, see ResumableLoader). Under DDP Lightning wraps it and splits it across ranks.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch, self.start = size, seed, 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        start, self.start = self.start, 0
        return iter(torch.randperm(self.size, generator=generator)[start:].tolist())

    def __len__(self) -> int:
        return self.size


class ResumableLoader(DataLoader):
    """The training DataLoader, stateful for Lightning: checkpoints record the epoch and the
    batches already yielded in it, and a run resumed from a mid-epoch checkpoint continues with
    the next batch instead of restarting the epoch, so it ends with the same weights as an
    uninterrupted run. Lightning fetches batches of a sized loader on demand, so the count is
    exact. The skipped batches are never loaded when the sampler is an EpochShuffle; under DDP
    (Lightning's distributed wrapper) they are loaded and dropped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch, self.batches_done = 0, 0
        self._resume: tuple[int, int] | None = None

    def __iter__(self) -> Iterator[Any]:
        epoch = getattr(self.sampler, "epoch", 0)
        skip = self._resume[1] if self._resume and self._resume[0] == epoch else 0
        self._resume, self.epoch, self.batches_done = None, epoch, skip
        direct = isinstance(self.sampler, EpochShuffle)
        if direct:
            self.sampler.start = skip * self.batch_size
        batches = super().__iter__()
        for index, batch in enumerate(batches):
            if direct or index >= skip:
                self.batches_done += 1
                yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = (state["epoch"], state["batches_done"])


class TaskDataModule(L.LightningDataModule):
    """Base of the task datamodules: common arguments, model-facing attributes, loaders.

    Subclasses set ``folder_name`` (default folder under $ESSSM_DATA or ./data),
    ``expected_files`` (relative paths the data folder must hold) and ``subfolders``
    (where a download or archive puts them below data_dir), and implement ``how_to_get``
    (text for the missing-data error), ``_download`` (called by prepare_data when
    ``download`` is set and the data is absent) and ``_load_splits``. ``train_examples`` is the
    real data set's training size (what an epoch of the full run covers; the smoke projection's
    steps per epoch).
    """

    folder_name: str
    expected_files: tuple[str, ...]
    subfolders: tuple[str, ...] = ()
    train_examples: int

    def __init__(
        self,
        *,
        num_classes: int,
        seq_len: int,
        vocab_size: int | None,
        input_dim: int | None,
        task: Literal["classification", "retrieval", "lm"],
        data_dir: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = False,
        pad_to_max: bool = False,
    ) -> None:
        """Subclasses pass num_classes, seq_len, vocab_size, input_dim and task explicitly (so the CLI
        does not offer them); the rest are the arguments every datamodule takes, which subclasses
        forward as ``**kwargs``.

        Args:
            data_dir: data folder; default $ESSSM_DATA/<task> or ./data/<task>.
            batch_size: training batch size.
            eval_batch_size: validation/test batch size (default: batch_size).
            num_workers: DataLoader worker processes.
            seed: seed of the train/val splits, the training shuffle and the workers.
            download: fetch the data from its official source in prepare_data if absent.
            pad_to_max: pad every batch to seq_len instead of its longest sequence.
        """
        super().__init__()
        if (vocab_size is None) == (input_dim is None):
            raise ValueError("set exactly one of vocab_size (token inputs) and input_dim (continuous inputs)")
        self.data_dir = resolve_data_dir(data_dir, self.folder_name)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.download = download
        self.pad_to_max = pad_to_max
        self.num_classes = num_classes
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.input_dim = input_dim
        self.task = task
        self.datasets: dict[str, Dataset] = {}

    def prepare_data(self) -> None:
        """Download (only when ``download`` is set and the data is not there yet)."""
        if self.download and not self._has_data():
            self._download()

    def setup(self, stage: str | None = None) -> None:
        """Read the train/val/test splits from the data folder (once)."""
        if not self.datasets:
            self.datasets = self._load_splits()

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            raise RuntimeError(f"call {type(self).__name__}.setup() before building the {split} dataloader")
        dataset = self.datasets[split]
        return (ResumableLoader if shuffle else DataLoader)(
            dataset,
            batch_size=batch_size,
            sampler=EpochShuffle(len(dataset), self.seed) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=self.collate_fn(),
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(self.seed),
            persistent_workers=self.num_workers > 0,
        )

    def collate_fn(self) -> Callable[[Sequence[dict[str, Any]]], dict[str, Tensor]]:
        """How items become a batch: right-padding with masks (to seq_len with pad_to_max)."""
        return partial(pad_collate, pad_to=self.seq_len if self.pad_to_max else None)

    def data_root(self) -> Path:
        """The folder holding ``expected_files``: data_dir or one of its ``subfolders``."""
        root = self._find_root()
        if root is None:
            raise self._missing_data_error()
        return root

    def _missing_data_error(self) -> DataFolderError:
        return missing_data_error(
            type(self).__name__, self.data_dir, self.expected_files, self.how_to_get(), self.subfolders
        )

    def _find_root(self) -> Path | None:
        candidates = [self.data_dir, *(self.data_dir / sub for sub in self.subfolders)]
        return first_folder_with(candidates, self.expected_files)

    def _has_data(self) -> bool:
        return self._find_root() is not None

    def how_to_get(self) -> str:
        raise NotImplementedError

    def _download(self) -> None:
        raise NotImplementedError

    def _load_splits(self) -> dict[str, Dataset]:
        raise NotImplementedError


class LRAReleaseDataModule(TaskDataModule):
    """A task whose files come from one folder of the LRA release archive (``lra_folder``)."""

    lra_folder: str

    @property
    def subfolders(self) -> tuple[str, ...]:
        return (self.lra_folder, f"{LRA_RELEASE_ROOT}/{self.lra_folder}")

    def _download(self) -> None:
        download_lra_files(self.data_dir, self.lra_folder, self.expected_files)
