"""LRA ListOps: the datamodule (the evaluator and generator are in datamodules.listops_generator).

Source strings look like the LRA release files, e.g. ``( ( ( [MAX 2 ) 9 ) ] )`` for
[MAX 2 9 ] (= 9). Tokens are whitespace-separated; "(" and ")" are dropped as in LRA/S4,
leaving operators, digits and "]" (which LRA renames "X").

Generate a data set with no download (LRA sizes by default)::

    python -m datamodules.listops generate --out data/listops
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # the generate command: answered before torch and Lightning are imported below
    from datamodules.listops_generator import main

    sys.exit(main())

from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from datamodules.base import SPLITS, LRAReleaseDataModule
from datamodules.batching import TokenDataset
from datamodules.listops_generator import CLOSE, DIGITS, HEADER, LRA_TRAIN_EXAMPLES, OPERATORS
from datamodules.parsing import MalformedDataError, iter_tsv_rows, malformed, parse_label, require_nonempty
from datamodules.sources import LRA_RELEASE_ROOT, LRA_RELEASE_URL

PAREN_BYTES = frozenset({b"(", b")"})
VOCAB = ("<pad>", *OPERATORS, *DIGITS, CLOSE)  # id 0 is padding
TOKEN_IDS = {token.encode(): token_id for token_id, token in enumerate(VOCAB) if token_id > 0}
NUM_CLASSES = 10


# ----------------------------------------------------------------------------- datamodule


def tokenize(source: bytes) -> np.ndarray:
    """Token ids (uint8) of a Source string: parentheses dropped, unknown tokens rejected."""
    try:
        ids = [TOKEN_IDS[token] for token in source.split() if token not in PAREN_BYTES]
    except KeyError as error:
        raise ValueError(f"unknown ListOps token {error.args[0]!r}") from None
    return np.array(ids, dtype=np.uint8)


def read_listops_tsv(path: Path, max_len: int) -> TokenDataset:
    """A ListOps split: "x" token ids truncated to max_len, "y" the target; header optional."""
    sequences: list[np.ndarray] = []
    labels: list[int] = []
    for line_number, fields in iter_tsv_rows(path):
        if not sequences and fields == [name.encode() for name in HEADER]:
            continue
        if len(fields) != 2:
            problem = f"expected 2 tab-separated columns (Source, Target); got {len(fields)}"
            raise malformed(path, line_number, problem)
        source, target = fields
        try:
            ids = tokenize(source)
        except ValueError as error:
            raise malformed(path, line_number, str(error)) from None
        labels.append(parse_label(target, NUM_CLASSES, path, line_number))
        sequences.append(require_nonempty(ids, path, line_number, "Source")[:max_len])
    if not labels:
        raise MalformedDataError(f"{path} holds no examples")
    return TokenDataset({"x": sequences}, labels, id_offset=0)


class ListOpsDataModule(LRAReleaseDataModule):
    """LRA ListOps: 10-way classification of token sequences (vocab: pad, 4 operators, 10 digits, "]").

    Batches: x (B, L) long, mask (B, L) bool, y (B,), index (B,).
    """

    folder_name = "listops"
    expected_files = tuple(f"basic_{split}.tsv" for split in SPLITS)
    lra_folder = "listops-1000"
    train_examples = LRA_TRAIN_EXAMPLES

    def __init__(self, max_len: int = 2000, **kwargs: Any) -> None:
        """Common arguments (data_dir, batch_size, ...): see TaskDataModule.

        Args:
            max_len: tokens kept per expression (LRA: 2000; S4 uses 2048).
        """
        super().__init__(
            num_classes=NUM_CLASSES,
            seq_len=max_len,
            vocab_size=len(VOCAB),
            input_dim=None,
            objective="classification",
            **kwargs,
        )
        self.max_len = max_len

    def how_to_get(self) -> str:
        return (
            "generate them (no download) with "
            f"`python -m datamodules.listops generate --out {self.data_dir}`, "
            f"or set download: true to fetch them from the LRA release {LRA_RELEASE_URL} "
            f"({LRA_RELEASE_ROOT}/{self.lra_folder})."
        )

    def _load_splits(self) -> dict[str, Dataset]:
        root = self.data_root()
        return {split: read_listops_tsv(root / f"basic_{split}.tsv", self.max_len) for split in SPLITS}
