"""A tiny synthetic datamodule with the project's batch contract, for Lightning-level tests."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset


class ToyDataset(Dataset):
    """Label = which of `num_classes` marker tokens occurs most often; lengths vary per example."""

    def __init__(self, size: int, seq_len: int, num_classes: int, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.examples = []
        for _ in range(size):
            length = int(torch.randint(seq_len // 2, seq_len + 1, (), generator=gen))
            x = torch.randint(num_classes + 1, num_classes + 5, (length,), generator=gen)
            label = int(torch.randint(0, num_classes, (), generator=gen))
            spots = torch.randperm(length, generator=gen)[: length // 3]
            x[spots] = label + 1
            self.examples.append((x, label))

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int):
        return i, *self.examples[i]


def collate(items):
    length = max(len(x) for _, x, _ in items)
    x = torch.zeros(len(items), length, dtype=torch.long)
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for row, (_, seq, _) in enumerate(items):
        x[row, : len(seq)], mask[row, : len(seq)] = seq, True
    return {
        "x": x,
        "mask": mask,
        "y": torch.tensor([y for _, _, y in items]),
        "index": torch.tensor([i for i, _, _ in items]),
    }


class ToyDataModule(L.LightningDataModule):
    def __init__(
        self, train_size: int = 256, val_size: int = 61, seq_len: int = 24, num_classes: int = 3,
        batch_size: int = 16, eval_batch_size: int | None = None, seed: int = 0, data_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.num_classes, self.seq_len, self.vocab_size = num_classes, seq_len, num_classes + 5
        self.input_dim, self.objective = None, "classification"
        self.train_size, self.val_size, self.seed = train_size, val_size, seed
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size

    def setup(self, stage: str | None = None) -> None:
        self.train = ToyDataset(self.train_size, self.seq_len, self.num_classes, self.seed)
        self.val = ToyDataset(self.val_size, self.seq_len, self.num_classes, self.seed + 1)

    def train_dataloader(self):
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train, self.batch_size, shuffle=True, generator=gen, collate_fn=collate)

    def val_dataloader(self):
        return DataLoader(self.val, self.eval_batch_size, collate_fn=collate)

    test_dataloader = val_dataloader
