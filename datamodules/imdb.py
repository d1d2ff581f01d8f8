"""LRA Text: IMDb sentiment (2 classes) on bytes, byte b -> token id b + 1 (0 is padding).

Sources, tried in this order: an aclImdb tree ({train,test}/{pos,neg}/*.txt), a
``datasets`` DatasetDict saved with ``save_to_disk`` (what ``download: true`` writes),
and, only when HF_HUB_OFFLINE=1, the Hugging Face cache of "stanfordnlp/imdb".
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from torch.utils.data import Dataset

from datamodules.base import TaskDataModule
from datamodules.batching import TokenDataset, seeded_split
from datamodules.parsing import bytes_to_array, check_labels, require_nonempty
from datamodules.sources import first_folder_with, load_hf_cache
from esssm.batch import BYTE_VOCAB_SIZE

if TYPE_CHECKING:
    import datasets

ACLIMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
HF_NAME = "stanfordnlp/imdb"
HF_FOLDER = "imdb_hf"
LABELS = {"neg": 0, "pos": 1}  # the HF dataset's label ids
ACLIMDB_FILES = tuple(f"{split}/{label}" for split in ("train", "test") for label in LABELS)


def read_aclimdb_split(folder: Path, max_len: int) -> TokenDataset:
    """One aclImdb split (folder with pos/ and neg/), files in sorted order, neg then pos."""
    sequences: list[np.ndarray] = []
    labels: list[int] = []
    for label_name, label in LABELS.items():
        for path in sorted((folder / label_name).glob("*.txt")):
            sequences.append(require_nonempty(bytes_to_array(path.read_bytes(), max_len), path, None, "review"))
            labels.append(label)
    return TokenDataset({"x": sequences}, labels, id_offset=1)


def hf_split_to_dataset(split: datasets.Dataset, max_len: int, source: str) -> TokenDataset:
    """A ``datasets.Dataset`` with "text" and "label" columns as byte tokens (UTF-8); empty
    texts and labels other than 0/1 are refused, naming `source` and the row."""
    sequences = [
        require_nonempty(bytes_to_array(text.encode("utf-8"), max_len), source, row, "text")
        for row, text in enumerate(split["text"])
    ]
    return TokenDataset({"x": sequences}, check_labels(split["label"], len(LABELS), source), id_offset=1)


class IMDBDataModule(TaskDataModule):
    """LRA Text (IMDb), byte level, vocab 257.

    Batches: x (B, L) long with L <= max_len, mask (B, L) bool, y (B,), index (B,).
    Validation uses the test split as LRA does (``val_split="test"``), or a seeded
    hold-out of ``val_size`` training reviews (``val_split="train"``).
    """

    folder_name = "imdb"
    expected_files = ACLIMDB_FILES
    subfolders = ("aclImdb",)
    train_examples = 25_000  # IMDb's training reviews

    def __init__(
        self,
        max_len: int = 4096,
        val_split: Literal["test", "train"] = "test",
        val_size: int = 2500,
        **kwargs: Any,
    ) -> None:
        """Common arguments (data_dir, batch_size, ...): see TaskDataModule.

        Args:
            max_len: bytes kept per review (the paper: 4096).
            val_split: "test" validates on the test split (LRA); "train" on val_size held-out
                training reviews.
            val_size: reviews held out when val_split is "train".
        """
        super().__init__(
            num_classes=len(LABELS),
            seq_len=max_len,
            vocab_size=BYTE_VOCAB_SIZE,
            input_dim=None,
            objective="classification",
            **kwargs,
        )
        self.max_len = max_len
        self.val_split = val_split
        self.val_size = val_size

    def how_to_get(self) -> str:
        return (
            f"extract {ACLIMDB_URL} into {self.data_dir}, or set download: true (Hugging Face {HF_NAME}, "
            f"saved to {self.data_dir / HF_FOLDER}), or use a cached copy with HF_HUB_OFFLINE=1."
        )

    def _hf_folder(self) -> Path | None:
        return first_folder_with([self.data_dir, self.data_dir / HF_FOLDER], ["dataset_dict.json"])

    def _has_data(self) -> bool:
        return super()._has_data() or self._hf_folder() is not None

    def _download(self) -> None:
        import datasets

        datasets.load_dataset(HF_NAME).save_to_disk(str(self.data_dir / HF_FOLDER))

    def _read_train_test(self) -> tuple[TokenDataset, TokenDataset]:
        root = self._find_root()
        if root is not None:
            train, test = (read_aclimdb_split(root / split, self.max_len) for split in ("train", "test"))
            return train, test
        splits = self._read_hf_splits()
        if splits is None:
            raise self._missing_data_error()
        train, test = (
            hf_split_to_dataset(splits[split], self.max_len, f"{self._hf_folder() or HF_NAME} ({split} split)")
            for split in ("train", "test")
        )
        return train, test

    def _read_hf_splits(self) -> datasets.DatasetDict | None:
        folder = self._hf_folder()
        if folder is None:
            return load_hf_cache(HF_NAME)
        import datasets

        return datasets.load_from_disk(str(folder))

    def _load_splits(self) -> dict[str, Dataset]:
        train, test = self._read_train_test()
        if self.val_split == "test":
            return {"train": train, "val": test, "test": test}
        train_part, val_part = seeded_split(train, self.val_size, self.seed)
        return {"train": train_part, "val": val_part, "test": test}
