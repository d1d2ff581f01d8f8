"""Objectives: what a model predicts from a batch and how it is scored, the one place that knows.

- "classification": one label per example, y (B,), from x/mask (LRA Text, ListOps, Pathfinder,
  sCIFAR, Speech Commands);
- "retrieval": one label per document pair, y (B,), from x1/mask1 and x2/mask2 (AAN);
- "lm": the next token at every position, y (B, L) with PAD where there is none; scored per
  target token, and in bits per byte (the loss in nats / ln 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from esssm.batch import PAD
from esssm.model import LanguageModel, RetrievalClassifier, SequenceClassifier

NOTHING_IGNORED = -100  # cross-entropy's default ignore_index; labels are >= 0


@dataclass(frozen=True)
class Objective:
    """name; documents: the (tokens, mask) batch keys of each input document; per_token: targets
    (B, L) at every position (a language model) instead of one label (B,) per example."""

    name: str
    documents: tuple[tuple[str, str], ...]
    per_token: bool

    @property
    def inputs(self) -> tuple[str, ...]:
        """The batch keys the model reads, in the order of exported graphs' inputs."""
        return tuple(key for document in self.documents for key in document)

    @property
    def ignore_index(self) -> int:
        """The target id that carries no label: PAD for per-token targets, none otherwise."""
        return PAD if self.per_token else NOTHING_IGNORED

    @property
    def score(self) -> str:
        """The metric a budget curve shows: bits per byte for a language model, else accuracy."""
        return "bpb" if self.per_token else "acc"

    def extra_metrics(self, loss: float | torch.Tensor) -> dict[str, float | torch.Tensor]:
        """Metrics derived from the mean loss in nats: bits per byte for a language model."""
        return {"bpb": loss / math.log(2)} if self.per_token else {}

    def example_stats(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per example (B,): correct predictions, summed cross-entropy (nats), predictions made;
        logits (B, C) and y (B,), or (B, L, V) and (B, L) per token, where PAD targets count nothing."""
        if not self.per_token:
            loss = F.cross_entropy(logits.float(), y, reduction="none")
            return logits.argmax(-1) == y, loss, torch.ones_like(loss)
        valid = y != PAD
        loss = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none", ignore_index=PAD)
        return ((logits.argmax(-1) == y) & valid).sum(1), loss.sum(1), valid.sum(1)

    def build(
        self, backbone: nn.Module, num_classes: int, vocab_size: int | None, input_dim: int | None,
        embed_dropout: float = 0.1, embed_std: float | None = 0.02, lm_head_bias: bool = False,
    ) -> nn.Module:
        """The plain-torch model around a backbone (what training wraps and deployment loads).

        Defaults are the authors' block: embedding dropout 0.1, embeddings N(0, 0.02^2), tied LM
        head without bias (lm_head_bias concerns only "lm", whose classes are its vocabulary).
        """
        if self.per_token:
            if vocab_size is None:
                raise ValueError(f"objective {self.name!r} needs token inputs: vocab_size must be set")
            return LanguageModel(backbone, vocab_size, embed_dropout, embed_std, lm_head_bias)
        model_cls = RetrievalClassifier if len(self.documents) == 2 else SequenceClassifier
        return model_cls(backbone, num_classes, vocab_size, input_dim, embed_dropout, embed_std)


OBJECTIVES = {
    objective.name: objective
    for objective in (
        Objective("classification", (("x", "mask"),), per_token=False),
        Objective("retrieval", (("x1", "mask1"), ("x2", "mask2")), per_token=False),
        Objective("lm", (("x", "mask"),), per_token=True),
    )
}


def get_objective(name: str) -> Objective:
    """The objective called `name`; any other value is an error naming the setting."""
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {tuple(OBJECTIVES)}, got {name!r}")
    return OBJECTIVES[name]


def objective_model(objective: str, backbone: nn.Module, num_classes: int, vocab_size: int | None,
                    input_dim: int | None, **head: float | bool | None) -> nn.Module:
    """The model of the named objective around `backbone` (`Objective.build`; head: its embedding
    and LM-head settings)."""
    return get_objective(objective).build(backbone, num_classes, vocab_size, input_dim, **head)
