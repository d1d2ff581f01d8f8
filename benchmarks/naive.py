"""The naive yardstick of docs/benchmarks.md: a straightforward ES-SSM layer forward.

All k*D convolutions are materialised at once, each channel is projected by its own einsum
into a (B, L, k, D) tensor, and only then weighted by the gate and summed. It uses the
parameters and filters of a real `ESSSMLayer`, so the two must agree to float32 round-off.
"""

from __future__ import annotations

import torch

from esssm.layer import ESSSMLayer, check_budget
from esssm.spectral import causal_fft_conv, fft_dtype, filter_scale


def naive_forward(layer: ESSSMLayer, u: torch.Tensor, budget: int | None = None) -> torch.Tensor:
    """u (B, L, D) -> (B, L, D), the same function as `layer(u, budget)`."""
    k = check_budget(budget, layer.k_max)
    spectra, nfft = layer.spectra(u.shape[1], fft_dtype(u.dtype))
    conv = causal_fft_conv(u, spectra[:k], nfft).to(u.dtype)  # (B, k, D, L)
    projected = torch.stack(
        [torch.einsum("bdl,de->ble", conv[:, j], layer.mix[j]) for j in range(k)], dim=2
    )  # (B, L, k, D)
    alpha = gate(layer, u, k) * filter_scale(layer.sigma[:k])  # (B, L, k)
    return layer.skip(u) + (projected * alpha.unsqueeze(-1)).sum(dim=2)


def gate(layer: ESSSMLayer, u: torch.Tensor, k: int) -> torch.Tensor:
    """alpha (B, L, k) from the layer's gate parameters with plain torch modules."""
    if not layer.gate:
        return u.new_full((*u.shape[:2], k), 1.0 / k if layer.normalize else 1.0)
    logits = torch.nn.functional.gelu(layer.gate_in(u)) @ layer.gate_out.weight[:k].T
    logits = logits + layer.gate_out.bias[:k]
    if layer.rms_rescale:
        logits = logits * (k**0.5 / logits.norm(dim=-1, keepdim=True).clamp_min(layer.eps))
    return logits.softmax(dim=-1)
