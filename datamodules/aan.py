"""LRA Retrieval (AAN): do two papers cite each other? Two byte documents per example.

Files new_aan_pairs.{train,eval,test}.tsv: no header, 5 tab-separated columns
label, id1, id2, text1, text2, read with quoting off; byte b -> token id b + 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from datamodules.base import LRAReleaseDataModule
from datamodules.batching import TokenDataset
from datamodules.parsing import (
    MalformedDataError,
    bytes_to_array,
    iter_tsv_rows,
    malformed,
    parse_label,
    require_nonempty,
)
from datamodules.sources import LRA_RELEASE_ROOT, LRA_RELEASE_URL
from esssm.batch import BYTE_VOCAB_SIZE

FILE_SPLITS = {"train": "train", "val": "eval", "test": "test"}  # datamodule split -> file name part
COLUMNS = ("label", "id1", "id2", "text1", "text2")
COLUMN_NAMES = ", ".join(COLUMNS)
NUM_CLASSES = 2


def aan_file_name(split: str) -> str:
    return f"new_aan_pairs.{FILE_SPLITS[split]}.tsv"


def read_aan_tsv(path: Path, max_len: int) -> TokenDataset:
    """An AAN split: "x1"/"x2" byte arrays of the two texts truncated to max_len, "y" the label."""
    documents: dict[str, list[np.ndarray]] = {"x1": [], "x2": []}
    labels: list[int] = []
    for line_number, fields in iter_tsv_rows(path):
        if len(fields) != len(COLUMNS):
            problem = f"expected {len(COLUMNS)} tab-separated columns ({COLUMN_NAMES}); got {len(fields)}"
            raise malformed(path, line_number, problem)
        labels.append(parse_label(fields[0], NUM_CLASSES, path, line_number))
        for key, column in (("x1", 3), ("x2", 4)):
            text = require_nonempty(bytes_to_array(fields[column], max_len), path, line_number, COLUMNS[column])
            documents[key].append(text)
    if not labels:
        raise MalformedDataError(f"{path} holds no examples")
    return TokenDataset(documents, labels, id_offset=1)


class AANDataModule(LRAReleaseDataModule):
    """LRA Retrieval (AAN), task "retrieval", byte level, vocab 257.

    Batches: x1, x2 (B, L) long, mask1, mask2 (B, L) bool (L <= max_len, each pair of
    documents padded to the batch's longest), y (B,), index (B,). Validation reads the
    "eval" file.
    """

    folder_name = "aan"
    expected_files = tuple(aan_file_name(split) for split in FILE_SPLITS)
    lra_folder = "tsv_data"
    train_examples = 147_086  # LRA AAN training pairs

    def __init__(self, max_len: int = 4000, **kwargs: Any) -> None:
        """Common arguments (data_dir, batch_size, ...): see TaskDataModule.

        Args:
            max_len: bytes kept per document (LRA: 4000).
        """
        super().__init__(
            num_classes=NUM_CLASSES,
            seq_len=max_len,
            vocab_size=BYTE_VOCAB_SIZE,
            input_dim=None,
            objective="retrieval",
            **kwargs,
        )
        self.max_len = max_len

    def how_to_get(self) -> str:
        return (
            f"set download: true, or fetch the LRA release {LRA_RELEASE_URL} and copy "
            f"{LRA_RELEASE_ROOT}/{self.lra_folder}/new_aan_pairs.*.tsv here."
        )

    def _load_splits(self) -> dict[str, Dataset]:
        root = self.data_root()
        return {split: read_aan_tsv(root / aan_file_name(split), self.max_len) for split in FILE_SPLITS}
