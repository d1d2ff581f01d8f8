"""The elastic spectral SSM layer: one trained layer, evaluated at any budget k <= k_max."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from esssm.ops.gemm import linear
from esssm.ops.mixing import MixPlan, gemm_dtype, spectral_mixing
from esssm.ops.reference import reference_mixing
from esssm.spectral import fast_fft_size, fft_dtype, filter_scale, filter_spectra, spectral_filters


def check_budget(budget: int | torch.SymInt | None, k_max: int) -> int | torch.SymInt:
    """Resolve a runtime budget: None means k_max; anything outside [1, k_max] is an error. A
    budget traced as a graph input (a SymInt: the elastic ONNX export) is constrained to [1, k_max]."""
    if budget is None:
        return k_max
    if isinstance(budget, torch.SymInt):
        torch._check(budget >= 1, lambda: f"budget must be in [1, {k_max}]")
        torch._check(budget <= k_max, lambda: f"budget must be in [1, {k_max}]")
        return budget
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= k_max:
        raise ValueError(
            f"budget must be an int in [1, {k_max}] (or None for the full k_max={k_max}), "
            f"got {budget!r}"
        )
    return budget


# Total weight of the active channels: 1 (the method) or k (the plain sum's gain, an ablation).
WEIGHT_SUMS = ("one", "k")


@dataclass(frozen=True)
class SpectralSettings:
    """The switches of every spectral-filter mixer (ES-SSM's layer and AR-STU's), declared once.

    A backbone takes them as one `layer` argument: in a config `layer: {channel_chunk: 8}` (absent
    fields keep the backbone's defaults); a checkpoint stores them as a plain dict.

    mix_init_std: std of the mixing matrices M_j at init (the authors: 1e-3).
    channel_chunk: channels per GEMM (None: sized to a 16 MiB working set on CPU, 1 GiB on GPU).
    init_filters: False skips the eigendecomposition and leaves the filters NaN, for a layer whose
        filters come from a state dict (a checkpoint or an exported, truncated model, whose top-k
        filters of (L, K) need not match a fresh (L, k) computation).
    """

    mix_init_std: float = 1e-3
    channel_chunk: int | None = None
    init_filters: bool = True

    @classmethod
    def of(cls, value: SpectralSettings | Mapping[str, Any], base: SpectralSettings | None = None) -> Self:
        """`value` itself, or a plain dict (what a checkpoint stores) as the fields it changes from
        `base` (default: `cls()`); a field the settings do not have is an error naming it."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"layer settings must be a {cls.__name__} or a dict of its fields, got {value!r}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise ValueError(f"layer has no setting {unknown}; the settings of {cls.__name__} are {names}")
        return replace(base if base is not None else cls(), **value)


@dataclass(frozen=True)
class ESSSMSettings(SpectralSettings):
    """The ES-SSM layer's switches (`SpectralSettings` plus the gate and the kernel's).

    gate, rms_rescale: the softmax gate over the active prefix, and the RMS rescaling of its logits.
    normalize=False (needs gate=False) gives every channel the weight 1, the plain spectral-SSM
        sum of STU: truncating it drops terms with nothing renormalised, as in the fixed-budget
        baseline.
    gate_bias_init: the gate's output bias at init. eps: floor of the logits' norm.
    weight_sum: "one" (the method: the active channels' weights sum to 1) or "k" (scaled to sum
        to k, the plain sum's total weight; an ablation of the spectral path's gain).
    checkpoint: recompute the spectral convolutions in backward instead of storing (B, k, D, L)
        per layer (long sequences).
    fast=False mixes the channels with the plain reference (esssm.ops.reference) instead of the
        kernel: the same function, more memory.
    """

    gate: bool = True
    rms_rescale: bool = True
    normalize: bool = True
    gate_bias_init: float = -2.0
    weight_sum: str = "one"
    eps: float = 1e-6
    checkpoint: bool = False
    fast: bool = True

    def __post_init__(self) -> None:
        if self.weight_sum not in WEIGHT_SUMS:
            raise ValueError(f"layer.weight_sum must be one of {WEIGHT_SUMS}, got {self.weight_sum!r}")
        if self.weight_sum == "k" and not self.normalize:
            raise ValueError(
                "layer.weight_sum='k' rescales normalised weights; with layer.normalize=False they are 1 already"
            )
        if self.gate and not self.normalize:
            raise ValueError(
                "layer.normalize=False (unit channel weights) needs layer.gate=False: the gate is a softmax "
                "over the active prefix, which is normalised by construction"
            )


class ESSSMLayer(nn.Module):
    """ES-SSM sequence mixer (docs/design.md section 1), input and output (B, L, D).

    y(t) = sum_{j <= k} alpha_j(t) sigma_j^(1/4) M_j (phi_j * u)(t) + D_skip u(t), where alpha is a
    softmax over the active prefix of RMS-rescaled gate logits. Only channels 1..k are computed,
    so time, memory and gradients of a pass at budget k touch nothing beyond channel k.

    The mixing matrices are stored transposed, `mix[j] = M_j^T` of shape (D_in, D_out), so the
    active prefix `mix[:k]` reshapes to one (k*D, D) GEMM operand without a copy.

    The channel mixing runs in `esssm.ops`: with `settings.fast` (default) the kernel
    (docs/benchmarks.md): one input FFT per pass; the k*D convolutions run in cache-sized blocks,
    weighted, and feed one GEMM per chunk of `channel_chunk` channels; training stores only the
    convolutions (B, k, D, L), or nothing with `checkpoint` (recomputed in backward). Otherwise
    the plain reference of the same formula (all convolutions materialised; what TorchScript
    export traces). The switches are `ESSSMSettings`.
    """

    def __init__(
        self,
        d_model: int,
        seq_len: int,
        k_max: int = 32,
        settings: ESSSMSettings = ESSSMSettings(),  # noqa: B008 (frozen)
        filter_cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if d_model < 2:
            raise ValueError(f"d_model must be >= 2, got {d_model}")
        self.d_model, self.seq_len, self.k_max, self.settings = d_model, seq_len, k_max, settings
        # Persistent: a trained model never depends on recomputing the near-null-space filters.
        self.register_buffer("sigma", torch.full((k_max,), math.nan))
        self.register_buffer("phi", torch.full((seq_len, k_max), math.nan))
        if settings.init_filters:
            sigma, phi = spectral_filters(seq_len, k_max, cache_dir=filter_cache_dir)
            self.sigma.copy_(torch.from_numpy(sigma))
            self.phi.copy_(torch.from_numpy(phi))
        # Without the gate (the fixed-budget ablation) no gate parameters exist: unused ones
        # would inflate parameter counts and break DDP's gradient bucketing.
        self.gate_in = nn.Linear(d_model, d_model // 2) if settings.gate else None
        self.gate_out = nn.Linear(d_model // 2, k_max) if settings.gate else None
        if settings.gate:
            nn.init.constant_(self.gate_out.bias, settings.gate_bias_init)
        self.mix = nn.Parameter(torch.randn(k_max, d_model, d_model) * settings.mix_init_std)
        self.skip = nn.Linear(d_model, d_model, bias=False)
        # The FFT size of traced passes, for every length (see `spectra`); >= 2 seq_len - 1.
        self.fft_size_any_length = fast_fft_size(2 * seq_len - 1)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, seq_len={self.seq_len}, k_max={self.k_max}, settings={self.settings}"
        )

    def channel_weights(self, u: torch.Tensor, k: int) -> torch.Tensor:
        """alpha (B, L, k): masked-softmax gate over the active prefix; rows sum to 1 at any k
        (without the gate: 1/k each, or 1 each when not normalised), or to k with
        weight_sum="k", the plain sum's total weight."""
        settings = self.settings
        if not settings.gate:
            alpha = u.new_full((*u.shape[:2], k), 1.0 / k if settings.normalize else 1.0)
        else:
            hidden = F.gelu(linear(u, self.gate_in.weight, self.gate_in.bias))
            logits = linear(hidden, self.gate_out.weight[:k], self.gate_out.bias[:k])
            if settings.rms_rescale:
                norm = logits.norm(dim=-1, keepdim=True).clamp_min(settings.eps)
                logits = logits * (k**0.5 / norm)  # not math.sqrt: it has no ONNX form for a traced k
            alpha = logits.softmax(dim=-1)
        return alpha * k if settings.weight_sum == "k" else alpha

    def mixing_weights(self, u: torch.Tensor, k: int) -> torch.Tensor:
        """alpha_j(t) sigma_j^(1/4), (B, L, k): the weight of channel j's term at time t (one
        definition for the layer and for incremental generation, esssm/infer/generate.py)."""
        return self.channel_weights(u, k) * filter_scale(self.sigma[:k])

    def spectra(self, length: int, k: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        """Spectra (k, F) of the active filters, and their FFT size, for inputs of `length`.

        Eager: the smallest fast FFT size for the length, and the filters cut to `length` taps,
        since longer taps would wrap around into the kept outputs. Traced (torch.compile,
        torch.export): `fft_size_any_length` and the whole filters, for every length. L <= seq_len
        samples convolved with seq_len taps fit in 2 seq_len - 1, so the graph depends on the
        length only through slices, and one graph serves every length (dynamic shapes) instead of
        one compilation per length. Computed on every pass rather than cached: k transforms
        against the k*D*B of the convolutions (a 1/(D*B) share), and nothing outside the module's
        tensors, so the pass traces and always follows the current `phi`.
        """
        if torch.compiler.is_compiling():
            nfft, taps = self.fft_size_any_length, self.seq_len
        else:
            taps = int(length)  # torch.jit.trace gives sizes as tensors
            nfft = fast_fft_size(2 * taps - 1)
        return filter_spectra(self.phi[:taps, :k].to(dtype), nfft), nfft

    def forward(
        self, u: torch.Tensor, budget: int | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """u (B, L, D) -> (B, L, D) at budget k. `mask` is unused: the layer is causal, so the
        right-padding that follows a sequence never reaches its valid positions."""
        k = check_budget(budget, self.k_max)
        self._check_input(u)
        spectra, nfft = self.spectra(u.shape[1], k, fft_dtype(u.dtype))
        weights = self.mixing_weights(u, k)
        settings = self.settings
        if not settings.fast:
            return self.skip(u) + reference_mixing(u, weights, self.mix[:k], spectra, nfft)
        plan = MixPlan.for_input(
            u.shape, k, nfft, gemm_dtype(u), settings.channel_chunk, settings.checkpoint, u.device.type
        )
        return linear(u, self.skip.weight) + spectral_mixing(u, weights, self.mix[:k], spectra, plan)

    def _check_input(self, u: torch.Tensor) -> None:
        if u.dim() != 3 or u.shape[-1] != self.d_model:
            raise ValueError(
                f"ESSSMLayer expects input of shape (batch, length, d_model={self.d_model}), "
                f"got {tuple(u.shape)}"
            )
        if not 1 <= u.shape[1] <= self.seq_len:
            raise ValueError(
                f"input length {u.shape[1]} is outside [1, seq_len={self.seq_len}]: the filters "
                f"were built for seq_len={self.seq_len}; build the model with a larger seq_len"
            )

    def inactive_parameters(self, budget: int | None) -> int:
        """Parameters owned by channels beyond the budget (mixing matrices, gate output rows)."""
        k = check_budget(budget, self.k_max)
        gate_row = self.gate_out.in_features + 1 if self.settings.gate else 0
        per_channel = self.d_model * self.d_model + gate_row
        return (self.k_max - k) * per_channel
