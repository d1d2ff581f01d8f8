"""The causal convolution of an exported ES-SSM layer as real matrix products (two-stage DFT).

onnxruntime runs matrix products fast and its DFT op slowly; the Toeplitz matrix of the filter
taps costs O(L^2) per feature and k L^2 floats of file. So the ONNX graph convolves with a
Cooley-Tukey split of the FFT size n = n1 n2 (powers of two), each stage a real matmul
against precomputed cos/sin matrices (computed in float64, stored in float32):

    forward  X[f2 + n2 f1] = sum_t1 W1^(t1 f1) W^(t1 f2) sum_t2 W2^(t2 f2) x[t1 + n1 t2]
    inverse  y[t1 + n1 t2] = 1/n sum_f2 W2^(-t2 f2) W^(-t1 f2) sum_f1 W1^(-t1 f1) Z[f2 + n2 f1]

with W = exp(-2 pi i / n), W1 = W^n2, W2 = W^n1. Signals fill the first n/2 samples (t2 < n2/2)
and only those outputs are kept, so the outer stages use half of their matrices; the middle
factor W^(t1 f2) is an elementwise "twiddle". A complex value is a (re, im) pair along an axis:
no complex tensor enters the graph. About n (4 n1 + n2) multiply-adds per inverse transform
(n1 ~ sqrt(n) / 2), 5-10x the arithmetic of a radix-2 FFT, but in GEMMs: docs/benchmarks.md
measures it against onnxruntime's DFT op and the Toeplitz product.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _dft_matrix(rows: int, cols: int, period: int, sign: int) -> torch.Tensor:
    """exp(sign 2 pi i r c / period), (rows, cols) complex128."""
    angle = sign * 2 * math.pi * torch.outer(torch.arange(rows), torch.arange(cols)).double() / period
    return torch.polar(torch.ones_like(angle), angle)


def _complex_block(m: torch.Tensor) -> torch.Tensor:
    """[[Re m, Im m], [-Im m, Re m]] (2a, 2b) of a complex (a, b): [xr | xi] @ it = [Re | Im] of x @ m."""
    return torch.cat([torch.cat([m.real, m.imag], 1), torch.cat([-m.imag, m.real], 1)], 0).float()


def _twiddle(x: torch.Tensor, twiddle: torch.Tensor) -> torch.Tensor:
    """x (..., n2, 2 n1) as [re | im] along the last axis, times twiddle (2, n2, n1): (..., 2, n2, n1)."""
    x_re, x_im = x.chunk(2, dim=-1)
    return torch.stack([x_re * twiddle[0] - x_im * twiddle[1], x_re * twiddle[1] + x_im * twiddle[0]], dim=-3)


class MatmulConvolution(nn.Module):
    """Causal convolution of (B, L, D) inputs with the first k filters of a bank phi (L_max, K) at
    a power-of-two FFT size nfft >= 2 L_max - 1 (so any L <= L_max): (B, k, D, L) with
    y[b, j, d, t] = sum_{s <= t} phi[t - s, j] u[b, s, d]."""

    def __init__(self, phi: torch.Tensor, nfft: int) -> None:
        super().__init__()
        if nfft < 4 or nfft & (nfft - 1) or nfft < 2 * phi.shape[0] - 1:
            raise ValueError(f"nfft must be a power of two >= max(4, 2 * {phi.shape[0]} - 1), got {nfft}")
        n1 = 1 << max(0, nfft.bit_length() // 2 - 2)  # about sqrt(n) / 2: the least work per transform
        n2 = nfft // n1
        self.nfft, self.n1, self.n2 = nfft, n1, n2
        forward_outer = _dft_matrix(n2, n2 // 2, n2, -1)  # (f2, t2 < n2/2)
        inverse_outer = _dft_matrix(n2 // 2, n2, n2, 1) / nfft  # (t2 < n2/2, f2)
        twiddle = _dft_matrix(n2, n1, nfft, -1)  # (f2, t1)
        spectra = torch.fft.fft(phi.double().t(), n=nfft).unflatten(-1, (n1, n2)).transpose(1, 2)  # (K, f2, f1)
        constants = {
            "forward_outer": torch.cat([forward_outer.real, forward_outer.imag], 0),  # (2 n2, n2/2)
            "forward_twiddle": torch.stack([twiddle.real, twiddle.imag]),  # (2, n2, n1)
            "forward_inner": _complex_block(_dft_matrix(n1, n1, n1, -1)),  # (2 n1, 2 n1)
            "spectra": torch.stack([spectra.real, spectra.imag], 1),  # (K, 2, n2, n1)
            "inverse_inner": _complex_block(_dft_matrix(n1, n1, n1, 1)),
            "inverse_twiddle": torch.stack([twiddle.real, -twiddle.imag]),
            "inverse_outer": torch.cat([inverse_outer.real, -inverse_outer.imag], 1),  # (n2/2, 2 n2): Re only
        }
        for name, value in constants.items():
            self.register_buffer(name, value.float().contiguous(), persistent=False)

    def forward(self, u: torch.Tensor, k: int) -> torch.Tensor:
        length, n1, n2 = u.shape[1], self.n1, self.n2
        x = F.pad(u.transpose(1, 2), (0, self.nfft // 2 - length)).unflatten(-1, (n2 // 2, n1))  # (B, D, t2, t1)
        a = (self.forward_outer @ x).unflatten(-2, (2, n2)).transpose(-3, -2).flatten(-2)  # (B, D, f2, [re|im] t1)
        a = _twiddle(a, self.forward_twiddle)  # (B, D, 2, f2, t1)
        x_hat = torch.cat([a[..., 0, :, :], a[..., 1, :, :]], -1) @ self.forward_inner  # (B, D, f2, [re|im] f1)
        x_re, x_im = x_hat.unsqueeze(1).chunk(2, dim=-1)  # (B, 1, D, f2, f1)
        s_re, s_im = self.spectra[:k, None, 0], self.spectra[:k, None, 1]  # (k, 1, f2, f1)
        z = torch.cat([x_re * s_re - x_im * s_im, x_re * s_im + x_im * s_re], -1)  # (B, k, D, f2, [re|im] f1)
        c = _twiddle(z @ self.inverse_inner, self.inverse_twiddle)  # (B, k, D, 2, f2, t1)
        y = self.inverse_outer @ c.flatten(-3, -2)  # (B, k, D, t2 < n2/2, t1)
        return y.flatten(-2)[..., :length]
