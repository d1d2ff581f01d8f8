"""Exact evaluation metrics under DDP: per-example results de-duplicated by dataset index."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class ExactAccuracy(Metric):
    """Accuracy and mean loss over the distinct examples seen, on all ranks together.

    A DistributedSampler pads the evaluation set by repeating examples so every rank gets the
    same number of batches; counting those twice skews the number. Each update therefore keeps
    per-example sums (dataset index, correct predictions, summed loss, predictions made),
    torchmetrics gathers them across ranks, and `compute` keeps one entry per index: 1 process
    and N processes report the same number. A classification example makes one prediction; a
    language-model example one per valid token, so its accuracy and loss are per token.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("index", "correct", "loss", "count"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        index: torch.Tensor,
        correct: torch.Tensor,
        loss: torch.Tensor,
        count: torch.Tensor | None = None,
    ) -> None:
        """Per example (N,): dataset index, correct predictions, summed loss, and the number of
        predictions (default 1 each)."""
        self.index.append(index.detach().long())
        self.correct.append(correct.detach().double())
        self.loss.append(loss.detach().double())
        self.count.append(torch.ones_like(self.loss[-1]) if count is None else count.detach().double())

    def compute(self) -> dict[str, torch.Tensor]:
        index = dim_zero_cat(self.index)
        if index.numel() == 0:
            nan = torch.tensor(float("nan"), device=self.device)
            zero = torch.tensor(0, device=self.device)
            return {"acc": nan, "loss": nan, "count": zero, "predictions": zero}
        keep = _first_occurrences(index)
        count = dim_zero_cat(self.count)[keep].sum()
        return {
            "acc": (dim_zero_cat(self.correct)[keep].sum() / count).float(),
            "loss": (dim_zero_cat(self.loss)[keep].sum() / count).float(),
            "count": torch.tensor(keep.numel(), device=index.device),
            "predictions": count.long(),
        }


def _first_occurrences(index: torch.Tensor) -> torch.Tensor:
    """Positions of the first occurrence of each distinct value of a 1-D index tensor."""
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    first = torch.ones_like(sorted_index, dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    return order[first]
