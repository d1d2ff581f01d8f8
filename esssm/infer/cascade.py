"""Cascade (anytime inference): answer at a small budget, escalate only the examples whose
confidence is low, and measure accuracy against compute."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from esssm.batch import Batch, model_inputs
from esssm.infer.model import batch_logits, elastic_k_max, to_device
from esssm.layer import check_budget
from esssm.model import active_parameters
from esssm.timing import time_once


@dataclass
class CascadeResult:
    """Per example (B,): the answering stage's logits (B, C), the budget that answered, and the
    compute spent on it over every stage it went through (channels = sum of their budgets,
    params = sum of their active parameters)."""

    logits: torch.Tensor
    budget: torch.Tensor
    channels: torch.Tensor
    params: torch.Tensor


def subset(batch: Batch, index: torch.Tensor, size: int) -> Batch:
    """Rows `index` of every (size, ...) tensor of a batch; other entries unchanged."""
    return {
        k: v[index] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == size else v
        for k, v in batch.items()
    }


def cascade_predict(
    model: nn.Module, batch: Batch, budgets: Sequence[int], threshold: float
) -> CascadeResult:
    """Anytime inference: run the smallest budget; examples whose confidence (max softmax
    probability) is below `threshold` go on to the next budget; the largest answers the rest.

    threshold 0 answers everything at the smallest budget, threshold > 1 everything at the
    largest. Later stages recompute from scratch (the gate renormalises over the active prefix,
    so no activation is shared between budgets), hence compute adds up over stages.
    """
    k_max = elastic_k_max(model)
    budgets = sorted({check_budget(k, k_max) for k in budgets})
    if not budgets:
        raise ValueError("cascade needs at least one budget")
    size = int(model_inputs(batch)[0].shape[0])
    device = model_inputs(batch)[0].device
    pending = torch.arange(size, device=device)
    answered = torch.zeros(size, dtype=torch.long, device=device)
    channels, params = torch.zeros_like(answered), torch.zeros_like(answered)
    logits = None
    for stage, k in enumerate(budgets):
        out = batch_logits(model, batch if len(pending) == size else subset(batch, pending, size), k)
        logits = out.new_empty(size, out.shape[-1]) if logits is None else logits
        last = stage == len(budgets) - 1
        confident = out.float().softmax(-1).amax(-1) >= threshold
        done = torch.ones_like(confident) if last else confident
        channels[pending] += k
        params[pending] += active_parameters(model, k)
        logits[pending[done]], answered[pending[done]] = out[done], k
        pending = pending[~done]
        if len(pending) == 0:
            break
    return CascadeResult(logits, answered, channels, params)


def evaluate_policy(
    model: nn.Module,
    batches: Iterable[Batch],
    budgets: Sequence[int],
    threshold: float,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Accuracy, mean compute per example and measured model time of one cascade policy over
    labelled batches (a single budget is the fixed-budget policy)."""
    device = torch.device(device)
    model = model.to(device).eval()
    correct = count = channels = params = 0
    ms = 0.0
    answered: dict[int, int] = {}
    with torch.inference_mode():
        for batch in batches:
            batch = to_device(batch, device)
            results: list[CascadeResult] = []
            ms += time_once(lambda: results.append(cascade_predict(model, batch, budgets, threshold)), device)
            result = results[0]
            correct += int((result.logits.argmax(-1) == batch["y"]).sum())
            count += len(result.budget)
            channels += int(result.channels.sum())
            params += int(result.params.sum())
            for k, n in zip(*torch.unique(result.budget, return_counts=True)):
                answered[int(k)] = answered.get(int(k), 0) + int(n)
    if count == 0:
        raise ValueError("no examples to evaluate (empty data split)")
    return {
        "acc": correct / count,
        "count": count,
        "avg_channels": channels / count,
        "avg_params": params / count,
        "ms_per_example": ms / count,
        "answered": {k: n / count for k, n in sorted(answered.items())},
    }


def warm_up(model: nn.Module, batch: Batch, budgets: Iterable[int], device: str | torch.device) -> None:
    """One untimed pass per budget: the first call pays for filter spectra and allocations."""
    model = model.to(device).eval()
    with torch.inference_mode():
        for k in budgets:
            batch_logits(model, to_device(batch, device), k)


def cascade_sweep(
    model: nn.Module,
    batches: Callable[[], Iterable[Batch]],
    budgets: Sequence[int],
    thresholds: Sequence[float],
    device: str | torch.device = "cpu",
    advance: Callable[[], object] | None = None,
) -> list[dict[str, Any]]:
    """The fixed-budget curve (one row per budget) followed by the cascade over `budgets` at
    every threshold; `batches()` yields a fresh pass over the labelled data each time.
    `advance()` is called after each policy (a progress line)."""
    warm_up(model, next(iter(batches())), budgets, device)
    policies = [(f"k={k}", [k], math.inf) for k in sorted(budgets)]
    cascade = ",".join(str(k) for k in sorted(budgets))
    policies += [(f"cascade {cascade} @ {t:g}", budgets, t) for t in thresholds]
    rows = []
    for name, ks, t in policies:
        rows.append({"policy": name, "threshold": t, **evaluate_policy(model, batches(), ks, t, device)})
        if advance is not None:
            advance()
    return rows


def format_cascade(rows: Sequence[Mapping[str, Any]]) -> str:
    """Accuracy vs mean compute per example, fixed budgets first, then the cascades."""
    lines = [
        f"{'policy':<28}  {'acc %':>7}  {'avg channels':>12}  {'avg active params':>17}  "
        f"{'ms/example':>10}  answered at (fraction)"
    ]
    for r in rows:
        answered = " ".join(f"k{k}:{f:.2f}" for k, f in r["answered"].items())
        lines.append(
            f"{r['policy']:<28}  {100 * r['acc']:7.2f}  {r['avg_channels']:12.2f}  "
            f"{r['avg_params']:17,.0f}  {r['ms_per_example']:10.3f}  {answered}"
        )
    return "\n".join(lines)
