"""Pieces shared by the baseline mixers: causal short convolutions, depthwise FFT convolution,
time-step initialisation and padding helpers. Tensors are (B, L, D) unless stated."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from esssm.spectral import fast_fft_size, fft_dtype, filter_spectra


class CausalConv1d(nn.Conv1d):
    """Causal convolution along time on (B, L, C) -> (B, L, C_out): output t sees inputs t-k+1..t.

    `depthwise=True` is the short per-channel convolution of Mamba blocks; `depthwise=False` is a
    full-matrix FIR filter out_t = sum_i M_i x_{t-i} (the STU's autoregressive input term).
    """

    def __init__(
        self, channels: int, kernel_size: int, depthwise: bool = True, bias: bool = True
    ) -> None:
        super().__init__(
            channels,
            channels,
            kernel_size,
            padding=kernel_size - 1,
            groups=channels if depthwise else 1,
            bias=bias,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        length = x.shape[1]
        return super().forward(x.transpose(1, 2))[..., :length].transpose(1, 2)


def depthwise_fft_conv(u: torch.Tensor, kernel: torch.Tensor, nfft: int | None = None) -> torch.Tensor:
    """y[b, t, d] = sum_s kernel[d, (t - s) mod nfft] u[b, s, d], first L outputs, via real FFTs.

    u: (B, L, D); kernel: (D, K) with K <= nfft. With the default nfft (>= 2L - 1) and K <= L
    this is the causal linear convolution; a kernel that places taps at the end of an
    nfft-long buffer adds anti-causal lags (S4D's bidirectional kernel). One filter per feature,
    unlike `esssm.spectral.causal_fft_conv`, which applies every filter to every feature.
    Returns (B, L, D) in u's dtype; the FFTs run in float32 (float64 stays float64).
    """
    length = u.shape[1]
    nfft = nfft or fast_fft_size(2 * length - 1)
    dtype = fft_dtype(u.dtype)
    with torch.autocast(u.device.type, enabled=False):
        u_hat = torch.fft.rfft(u.to(dtype).transpose(1, 2), n=nfft, dim=-1)
        k_hat = filter_spectra(kernel.to(dtype).t(), nfft)
        y = torch.fft.irfft(u_hat * k_hat, n=nfft, dim=-1)[..., :length]
    return y.transpose(1, 2).to(u.dtype)


def log_uniform(n: int, low: float, high: float) -> torch.Tensor:
    """n samples of log(x) with x log-uniform in [low, high] (the S4/Mamba time-step prior)."""
    return torch.rand(n) * (math.log(high) - math.log(low)) + math.log(low)


def dt_bias_init(n: int, dt_min: float = 1e-3, dt_max: float = 0.1, floor: float = 1e-4) -> torch.Tensor:
    """Bias b with softplus(b) = dt, dt log-uniform in [dt_min, dt_max] (Mamba's dt init)."""
    dt = log_uniform(n, dt_min, dt_max).exp().clamp_min(floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse softplus


def zero_padding(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded positions of x (B, L, D); mask (B, L) True = valid, or None."""
    return x if mask is None else x.masked_fill(~mask.unsqueeze(-1), 0.0)


def pad_time(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Right-pad dim 1 of x (B, L, ...) with zeros to a multiple of `multiple`."""
    extra = -x.shape[1] % multiple
    if extra == 0:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 2) + (0, extra))
