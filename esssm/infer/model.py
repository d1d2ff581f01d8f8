"""The plain-torch model of a trained run and the batches the deployment tools feed it."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from esssm.batch import DATA_FIELDS, Batch, model_inputs
from esssm.layer import ESSSMLayer
from esssm.model import build_module
from esssm.objectives import get_objective


def model_config(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """What rebuilds a classifier without Lightning: the backbone spec and the data facts.

    hparams: a SequenceModule's hyperparameters (`module.hparams`) or an exported config.
    """
    config = {key: hparams.get(key) for key in DATA_FIELDS}
    config["objective"] = config["objective"] or "classification"
    config["lm_head_bias"] = bool(hparams.get("lm_head_bias", False))
    config["backbone"] = copy.deepcopy(dict(hparams["backbone"]))
    return config


def build_model(config: Mapping[str, Any], init_filters: bool = True) -> nn.Module:
    """The plain-torch model (classifier, retrieval or LM) from `model_config`. init_filters=False skips the
    eigendecomposition of a spectral backbone (one with `layer` settings; the state dict brings the filters)."""
    spec = copy.deepcopy(dict(config["backbone"]))
    layer = spec.get("init_args", {}).get("layer")
    if not init_filters and layer is not None:
        spec["init_args"]["layer"] = {**layer, "init_filters": False}
    backbone = build_module(spec)
    return get_objective(config["objective"]).build(
        backbone, config["num_classes"], config["vocab_size"], config["input_dim"],
        lm_head_bias=config.get("lm_head_bias", False),
    )


def batch_logits(model: nn.Module, batch: Batch, budget: int | None = None) -> torch.Tensor:
    """Logits (B, C) of a project batch dict at `budget` (None = the model's full k_max)."""
    return model(*model_inputs(batch), budget=budget)


def synthetic_batch(
    config: Mapping[str, Any], batch_size: int, seq_len: int, device: str | torch.device = "cpu"
) -> Batch:
    """Random inputs of the objective's kind, shape (B, L) token ids or (B, L, C) features, with
    all-valid masks; two documents for retrieval. Seeded, so every call gives the same batch."""
    gen = torch.Generator().manual_seed(0)

    def document() -> torch.Tensor:
        if config["vocab_size"] is not None:
            return torch.randint(config["vocab_size"], (batch_size, seq_len), generator=gen)
        return torch.randn(batch_size, seq_len, config["input_dim"], generator=gen)

    names = get_objective(config["objective"]).documents
    mask = torch.ones(batch_size, seq_len, dtype=torch.bool)
    return {key: t.to(device) for x, m in names for key, t in ((x, document()), (m, mask))}


def relative_error(got: torch.Tensor | np.ndarray, expected: torch.Tensor) -> float:
    """max |got - expected| / max |expected|: how far a runtime's logits are from PyTorch's, at the
    scale of the output (got: a tensor or numpy array of expected's shape)."""
    got = torch.as_tensor(got).to(expected)
    scale = expected.abs().max().clamp_min(torch.finfo(torch.float32).tiny)
    return float((got - expected).abs().max() / scale)


def to_device(batch: Batch, device: str | torch.device) -> Batch:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def elastic_k_max(model: nn.Module) -> int:
    """The model's k_max; a clear error for a backbone without a spectral budget."""
    k_max = getattr(model, "k_max", None)
    if k_max is None or not any(isinstance(m, ESSSMLayer) for m in model.modules()):
        backbone = type(getattr(model, "backbone", model)).__name__
        raise ValueError(
            f"budgeted deployment needs an elastic ES-SSM backbone; {backbone} has no spectral "
            "budget (k_max), so it runs at one size only"
        )
    return k_max
