"""The base of the task datamodules: the model-facing attributes every task exposes and its
loaders. Where the files come from is in `datamodules.sources`, how rows are read in
`datamodules.parsing`, how examples become batches in `datamodules.batching`, and the
`python -m datamodules.<task> generate` command shape in `datamodules.commands`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from datamodules.batching import EpochShuffle, ResumableLoader, pad_collate, seed_worker
from datamodules.sources import (
    LRA_RELEASE_ROOT,
    DataFolderError,
    download_lra_files,
    first_folder_with,
    missing_data_error,
    resolve_data_dir,
)

SPLITS = ("train", "val", "test")


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
        objective: Literal["classification", "retrieval", "lm"],
        data_dir: str | None = None,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = False,
        pad_to_max: bool = False,
    ) -> None:
        """Subclasses pass num_classes, seq_len, vocab_size, input_dim and objective (what the labels
        are: one per example, per document pair or per token) explicitly (so the CLI
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
        self.objective = objective
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
