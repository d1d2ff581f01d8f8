"""The batch contract between datamodules and models: one home for the facts both sides use.

A batch is a dict of tensors: x (B, L) token ids or (B, L, C) features with mask (B, L), True at
valid positions; retrieval has two documents, x1/mask1 and x2/mask2; y holds the labels (B,),
or the next-token ids (B, L) of a language model; evaluation batches add index (B,).
"""

from __future__ import annotations

from typing import Any

import torch

PAD = 0  # token id 0 pads sequences; as an LM target it marks positions without a next byte
BYTE_VOCAB_SIZE = 257  # PAD, then byte values 0..255 as ids 1..256
# What a datamodule tells the model about its data (the CLI links them, exports record them).
DATA_FIELDS = ("num_classes", "vocab_size", "input_dim", "objective")

Batch = dict[str, Any]


def model_inputs(batch: Batch) -> tuple[torch.Tensor | None, ...]:
    """Positional inputs of the task model's forward: (x, mask), or (x1, x2, mask1, mask2)."""
    if "x1" in batch:
        return batch["x1"], batch["x2"], batch.get("mask1"), batch.get("mask2")
    return batch["x"], batch.get("mask")
