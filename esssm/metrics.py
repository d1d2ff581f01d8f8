"""Exact evaluation metrics under DDP: per-example results de-duplicated by dataset index."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class ExactAccuracy(Metric):
    """Accuracy and mean loss over the distinct examples seen, on all ranks together.

    A DistributedSampler pads the evaluation set by repeating examples so every rank gets the
    same number of batches; counting those twice skews the number. Each update therefore keeps
    (dataset index, correct, loss) per example, torchmetrics gathers them across ranks, and
    `compute` keeps one result per index: 1 process and N processes report the same number.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("index", "correct", "loss"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, index: torch.Tensor, correct: torch.Tensor, loss: torch.Tensor) -> None:
        """index (N,) dataset indices, correct (N,) bool, loss (N,) per-example loss."""
        self.index.append(index.detach().long())
        self.correct.append(correct.detach().float())
        self.loss.append(loss.detach().float())

    def compute(self) -> dict[str, torch.Tensor]:
        index = dim_zero_cat(self.index)
        if index.numel() == 0:
            nan = torch.tensor(float("nan"), device=self.device)
            return {"acc": nan, "loss": nan, "count": torch.tensor(0, device=self.device)}
        keep = _first_occurrences(index)
        return {
            "acc": dim_zero_cat(self.correct)[keep].mean(),
            "loss": dim_zero_cat(self.loss)[keep].mean(),
            "count": torch.tensor(keep.numel(), device=index.device),
        }


def _first_occurrences(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value of a 1-D index tensor."""
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    first = torch.ones_like(sorted_index, dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    return order[first]
