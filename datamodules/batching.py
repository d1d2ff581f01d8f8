"""From examples to batches: labelled and token datasets, seeded splits, the padding collate that builds the
batch dicts (with masks and an ``index`` per example) and the resumable (seed, epoch) training order."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler


class LabelledDataset(Dataset):
    """Examples with one integer label each: items {**inputs(i), "y": label, "index": i}, where
    subclasses give the input tensors of example i (read or converted on access)."""

    def __init__(self, labels: Sequence[int] | np.ndarray) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def inputs(self, index: int) -> dict[str, Tensor]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self.inputs(index), "y": int(self.labels[index]), "index": index}


class TokenDataset(LabelledDataset):
    """Examples of one or more byte/token sequences with a label.

    ``columns`` maps a batch key ("x", or "x1"/"x2" for pairs) to one uint8 array per
    example; item ids are ``array + id_offset`` (1 for bytes, so id 0 stays padding).
    """

    def __init__(self, columns: dict[str, list[np.ndarray]], labels: Sequence[int], id_offset: int) -> None:
        super().__init__(labels)
        self.columns = columns
        self.id_offset = id_offset

    def inputs(self, index: int) -> dict[str, Tensor]:
        return {key: torch.from_numpy(sequences[index].astype(np.int64)) + self.id_offset
                for key, sequences in self.columns.items()}


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
