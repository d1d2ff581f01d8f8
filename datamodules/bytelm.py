"""Causal byte-level language modelling over a folder of text files or a local HF dataset.

The authors' public ES-SSM code is a PG19 byte-level language model evaluated by bits per
byte at every budget. Any folder of text works (``python_stdlib: true`` uses this Python's own
standard-library sources, so the task runs anywhere with no download); PG19 is read from the
local Hugging Face cache (``hf_dataset: deepmind/pg19`` with HF_HUB_OFFLINE=1) or from a
``save_to_disk`` folder.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from datamodules.base import SPLITS, TaskDataModule
from datamodules.sources import DataFolderError, load_hf_cache
from esssm.batch import BYTE_VOCAB_SIZE

HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}


class ByteSegments(Dataset):
    """Non-overlapping windows of a byte stream: x = ids of bytes [s, s+L), y = ids of [s+1, s+L+1).

    The windows are a pure function of the stream, so validation and test sets are the same
    on every run and machine.
    """

    def __init__(self, stream: np.ndarray, seq_len: int) -> None:
        self.stream, self.seq_len = stream, seq_len
        self.count = (len(stream) - 1) // seq_len

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, Any]:
        start = index * self.seq_len
        window = torch.from_numpy(self.stream[start : start + self.seq_len + 1].astype(np.int64)) + 1
        return {"x": window[:-1], "y": window[1:], "index": index}


def collate_segments(items: list[dict[str, Any]]) -> dict[str, Tensor]:
    """Stack equal-length windows: x, y (B, L) long; mask (B, L) all True; index (B,)."""
    x = torch.stack([item["x"] for item in items])
    return {
        "x": x,
        "y": torch.stack([item["y"] for item in items]),
        "mask": torch.ones_like(x, dtype=torch.bool),
        "index": torch.tensor([item["index"] for item in items]),
    }


def split_of(relative_path: str, val_fraction: float, test_fraction: float) -> str:
    """A document's split from a hash of its path: stable across machines and file orderings,
    and whole documents stay in one split so no text leaks from training into evaluation."""
    u = int(hashlib.sha1(relative_path.encode()).hexdigest()[:8], 16) / 2**32
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def concatenate(documents: list[bytes], max_bytes: int | None) -> np.ndarray:
    """One uint8 stream of the documents, newline-separated, cut to max_bytes."""
    stream = b"\n".join(documents)
    return np.frombuffer(stream[:max_bytes] if max_bytes else stream, dtype=np.uint8)


def shuffled_prefix(documents: list[bytes], seed: int, max_bytes: int) -> list[bytes]:
    """The documents in a seeded random order, as few as give `max_bytes` of stream (the
    authors' evaluation sets: the first segments of a shuffled book stream)."""
    chosen, size = [], 0
    for index in np.random.default_rng(seed).permutation(len(documents)):
        if size >= max_bytes:
            break
        chosen.append(documents[index])
        size += len(documents[index]) + 1
    return chosen


class ByteLMDataModule(TaskDataModule):
    """Next-byte prediction on fixed-length segments (vocab 257, targets are byte ids).

    Batches: x (B, L) long, y (B, L) long next-byte ids, mask (B, L) bool, index (B,).
    """

    folder_name = "bytelm"
    expected_files = ()
    PG19_TRAIN_BYTES = 11_425_076_324  # characters of PG19's training split (HF dataset card)

    @property
    def train_examples(self) -> int:  # type: ignore[override]
        """seq_len-byte segments of PG19's training split, the full run's data."""
        return self.PG19_TRAIN_BYTES // self.seq_len

    def __init__(
        self,
        seq_len: int = 1024,
        pattern: str = "**/*.txt",
        python_stdlib: bool = False,
        hf_dataset: str | None = None,
        val_fraction: float = 0.05,
        test_fraction: float = 0.05,
        max_bytes: int | None = None,
        eval_segments: int | None = None,
        **kwargs: Any,
    ) -> None:
        """
        Args:
            seq_len: bytes per training segment (the model's context length).
            pattern: glob of the text files under data_dir.
            python_stdlib: read this Python's standard-library ``*.py`` files instead of data_dir.
            hf_dataset: a Hugging Face dataset with a "text" column and train/validation/test
                splits (e.g. deepmind/pg19), from data_dir (save_to_disk) or the local cache.
            val_fraction, test_fraction: documents held out (by path hash) for a folder source.
            max_bytes: cap on each split's stream, for quick runs.
            eval_segments: the validation and test sets are this many segments from the start
                of a stream of the split's documents in a random order (drawn from ``seed``,
                the same on every run), as the authors cache 1,024 per split; None: every
                segment of the split in its own order. Training always reads its whole split.
        """
        super().__init__(
            num_classes=BYTE_VOCAB_SIZE, seq_len=seq_len, vocab_size=BYTE_VOCAB_SIZE, input_dim=None,
            objective="lm", **kwargs,
        )
        if python_stdlib:
            self.data_dir, pattern = Path(sysconfig.get_paths()["stdlib"]), "*.py"
        self.pattern, self.hf_dataset, self.max_bytes = pattern, hf_dataset, max_bytes
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        if eval_segments is not None and eval_segments < 1:
            raise ValueError(f"eval_segments must be >= 1 (or null: the whole split), got {eval_segments}")
        self.eval_segments = eval_segments

    def how_to_get(self) -> str:
        return (
            f"put text files matching {self.pattern!r} in {self.data_dir}, or set python_stdlib: true "
            "(this Python's own sources), or hf_dataset: deepmind/pg19 with the dataset in the local "
            "Hugging Face cache (HF_HUB_OFFLINE=1) or saved with save_to_disk in data_dir."
        )

    def _files(self) -> list[Path]:
        return sorted(p for p in self.data_dir.glob(self.pattern) if p.is_file())

    def _has_data(self) -> bool:
        return self.hf_dataset is not None or bool(self._files())

    def data_root(self) -> Path:
        if not self._has_data():
            raise self._missing_data_error()
        return self.data_dir

    def _missing_data_error(self) -> DataFolderError:
        state = "does not exist" if not self.data_dir.exists() else f"has no files matching {self.pattern!r}"
        return DataFolderError(f"ByteLMDataModule data folder {self.data_dir} {state}.\nHow to get them: {self.how_to_get()}")

    def _folder_documents(self) -> dict[str, list[bytes]]:
        documents: dict[str, list[bytes]] = {split: [] for split in SPLITS}
        for path in self._files():
            relative = path.relative_to(self.data_dir).as_posix()
            documents[split_of(relative, self.val_fraction, self.test_fraction)].append(path.read_bytes())
        return documents

    def _hf_documents(self) -> dict[str, list[bytes]]:
        import datasets

        folder = self.data_dir / "dataset_dict.json"
        splits = datasets.load_from_disk(str(self.data_dir)) if folder.exists() else load_hf_cache(self.hf_dataset)
        if splits is None:
            raise self._missing_data_error()
        return {split: [t.encode() for t in splits[HF_SPLITS[split]]["text"]] for split in SPLITS}

    def _load_splits(self) -> dict[str, Dataset]:
        self.data_root()
        documents = self._hf_documents() if self.hf_dataset else self._folder_documents()
        splits = {}
        for split, docs in documents.items():
            if self.eval_segments is not None and split != "train":
                splits[split] = self._cached_segments(split, docs)
                continue
            segments = ByteSegments(concatenate(docs, self.max_bytes), self.seq_len)
            if len(segments) == 0:
                raise DataFolderError(
                    f"the {split} split of {self.data_dir} ({sum(map(len, docs))} bytes in {len(docs)} "
                    f"documents) is shorter than one segment of {self.seq_len + 1} bytes: add text, lower "
                    f"seq_len or change val_fraction/test_fraction"
                )
            splits[split] = segments
        return splits

    def _cached_segments(self, split: str, docs: list[bytes]) -> ByteSegments:
        """The first `eval_segments` segments of the split's documents in a seeded order."""
        need = self.eval_segments * self.seq_len + 1
        stream = concatenate(shuffled_prefix(docs, self.seed, need), need)
        if len(stream) < need:
            raise DataFolderError(
                f"eval_segments: {self.eval_segments} segments of {self.seq_len} bytes need {need} bytes, but "
                f"the {split} split of {self.data_dir} has {len(stream)}: lower eval_segments or add text"
            )
        return ByteSegments(stream, self.seq_len)  # exactly eval_segments windows

    def collate_fn(self):
        return collate_segments
