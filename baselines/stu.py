"""Spectral baselines: the original AR-STU, and the fixed-budget spectral SSM ablation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from baselines.common import CausalConv1d, depthwise_fft_conv
from esssm.layer import ESSSMSettings, SpectralSettings
from esssm.model import ESSSM, SequenceBackbone, records_init_args
from esssm.spectral import (
    causal_fft_conv, fast_fft_size, fft_dtype, filter_scale, filter_spectra, spectral_filters,
)


def signed_filter_bank(seq_len: int, num_filters: int) -> torch.Tensor:
    """(seq_len, 2K) float32: sigma_k^(1/4) phi_k, then the alternating-sign (-1)^t sigma_k^(1/4) phi_k.

    The first K columns feed the STU's positive branch, the last K its negative branch.
    """
    sigma, phi = spectral_filters(seq_len, num_filters)
    scaled = phi * filter_scale(sigma)
    signs = 1.0 - 2.0 * (np.arange(seq_len)[:, None] % 2)
    return torch.from_numpy(np.concatenate([scaled, scaled * signs], axis=1)).float()


def geometric_kernel(root: torch.Tensor, length: int) -> torch.Tensor:
    """(D, length) impulse responses root^n, n = 0..length-1, of y_t = x_t + root * y_{t-1}.

    A cumulative product, so gradients stay finite at root = 0 (where pow's would not).
    """
    powers = root.unsqueeze(-1).expand(-1, length - 1).cumprod(dim=-1)
    return torch.cat([torch.ones_like(root).unsqueeze(-1), powers], dim=-1)


class ARSTUMixer(nn.Module):
    """The Spectral Transform Unit with autoregressive terms (Agarwal et al. 2023), (B, L, D).

    delta_t = sum_k M+_k (sigma_k^(1/4) phi_k * u)_t + M-_k (sigma_k^(1/4) phi~_k * u)_t
              + sum_{i < k_u} M^u_i u_{t-i},     phi~_k(t) = (-1)^t phi_k(t),
    y_t = delta_t + sum_{i <= k_y} m^y_i y_{t-i}  (output autoregression).

    Choices: k_u = 3 and k_y = 2 as in the STU paper and code. The original M^y are full
    D x D matrices run by a sequential scan; here they are per-channel, with the order-k_y AR
    polynomial factored into real roots r_i = tanh(theta_i) (theta = 0 at init, matching the
    original zero init of M^y), so y is an exact cascade of k_y stable first-order IIR filters
    applied by FFT: fully parallel, and stable by construction. The filters are persistent
    buffers, so a checkpoint never depends on recomputing them. Causal; `mask`, `budget` ignored.
    `settings`: the spectral switches it shares with ES-SSM (channel_chunk None: all 2K filters
    in one GEMM).
    """

    def __init__(
        self,
        d_model: int,
        seq_len: int,
        num_filters: int = 24,
        k_u: int = 3,
        k_y: int = 2,
        settings: SpectralSettings = SpectralSettings(),  # noqa: B008 (frozen)
    ) -> None:
        super().__init__()
        self.seq_len, self.n_filters = seq_len, 2 * num_filters
        self.channel_chunk = settings.channel_chunk or self.n_filters
        filters = torch.full((seq_len, self.n_filters), math.nan)
        self.register_buffer("filters", signed_filter_bank(seq_len, num_filters) if settings.init_filters else filters)
        # Stored transposed (M_k^T, (D_in, D_out)) so a prefix of filters is one GEMM operand.
        self.mix = nn.Parameter(torch.randn(self.n_filters, d_model, d_model) * settings.mix_init_std)
        self.ar_input = CausalConv1d(d_model, k_u, depthwise=False, bias=False)
        self.ar_output = nn.Parameter(torch.zeros(k_y, d_model))

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None
    ) -> torch.Tensor:
        length = x.shape[1]
        if length > self.seq_len:
            raise ValueError(f"input length {length} exceeds seq_len={self.seq_len}")
        nfft = fast_fft_size(2 * length - 1)
        spectra = filter_spectra(self.filters[:length].to(fft_dtype(x.dtype)), nfft)
        y = self.ar_input(x)
        for start in range(0, self.n_filters, self.channel_chunk):
            block = slice(start, start + self.channel_chunk)
            conv = causal_fft_conv(x, spectra[block], nfft).flatten(1, 2)  # (B, c*D, L)
            y = y + conv.transpose(1, 2).to(x.dtype) @ self.mix[block].flatten(0, 1).to(x.dtype)
        for root in torch.tanh(self.ar_output):
            y = depthwise_fft_conv(y, geometric_kernel(root, length), nfft)
        return y


@records_init_args
class ARSTU(SequenceBackbone):
    """AR-STU backbone: (B, L, D) -> (B, L, D), causal. No gate and no budget (k_max None):
    `budget` is accepted and ignored. Blocks are STU + FFN (ffn_mult=4), as in Flash STU.
    layer: the mixers' `SpectralSettings` (or a dict of the fields that differ from its defaults)."""

    def __init__(
        self,
        d_model: int = 256,
        n_layers: int = 4,
        seq_len: int = 2048,
        num_filters: int = 24,
        k_u: int = 3,
        k_y: int = 2,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        drop_path: float = 0.05,
        layer: SpectralSettings = SpectralSettings(),  # noqa: B008 (frozen)
    ) -> None:
        settings = SpectralSettings.of(layer)
        super().__init__(
            lambda _: ARSTUMixer(d_model, seq_len, num_filters, k_u, k_y, settings),
            d_model, n_layers, ffn_mult, dropout, drop_path,
        )
        self.seq_len = seq_len


# A plain spectral SSM: unit channel weights, no gate, no normalisation.
FIXED_LAYER = ESSSMSettings(gate=False, rms_rescale=False, normalize=False)


@records_init_args
class FixedSpectralSSM(ESSSM):
    """The fixed-budget spectral SSM: a plain spectral SSM (STU's positive branch,
    y = sum_j sigma_j^(1/4) M_j (phi_j * u) + D u, no gate and no normalisation), built on the
    ES-SSM backbone so everything else (blocks, filters, sizes, every switch) is identical: it is
    `ESSSM` with `FIXED_LAYER` as its layer defaults. `layer={"normalize": True}` instead weights
    each active channel 1/k (ES-SSM without its gate); `layer={"fast": False}` or
    `{"checkpoint": True}` work as for ES-SSM. The other arguments are ESSSM's, by keyword.

    It is trained at full K_max only, i.e. WITHOUT budget dropout (a training-module setting,
    configured with the experiment, not here). It keeps k_max, so the budget sweep can still
    evaluate it truncated to k: channels beyond k are never computed (the collapse the paper
    reports when such a model is truncated).
    """

    def __init__(self, *, layer: ESSSMSettings = FIXED_LAYER, **backbone: Any) -> None:
        super().__init__(layer=ESSSMSettings.of(layer, FIXED_LAYER), **backbone)
