"""S4D baseline: diagonal state space model, Vandermonde kernel, FFT convolution (Gu et al. 2022)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from baselines.common import depthwise_fft_conv, log_uniform, zero_padding
from esssm.model import SequenceBackbone, records_init_args
from esssm.spectral import fast_fft_size

INITS = ("lin", "inv")


def s4d_imag_init(init: str, channels: int, half_state: int) -> torch.Tensor:
    """Imaginary parts of A, (channels, N/2): S4D-Lin pi n, or S4D-Inv N/pi (N/(2n+1) - 1)."""
    n = torch.arange(half_state, dtype=torch.float32)
    if init == "lin":
        imag = math.pi * n
    elif init == "inv":
        state = 2 * half_state
        imag = state / math.pi * (state / (2 * n + 1) - 1)
    else:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    return imag.repeat(channels, 1)


def vandermonde_kernel_ref(dt_a: torch.Tensor, cb: torch.Tensor, length: int) -> torch.Tensor:
    """Reference for `S4DMixer.kernel`: 2 Re(sum_n cb_n exp(dt_a_n l)), (kernels, N/2) -> (kernels, L),
    with the (kernels, N/2, L) Vandermonde matrix formed (O(N L) memory per channel)."""
    steps = torch.arange(length, device=dt_a.device, dtype=dt_a.real.dtype)
    return 2 * torch.einsum("hn,hnl->hl", cb, torch.exp(dt_a.unsqueeze(-1) * steps)).real


class S4DMixer(nn.Module):
    """S4D layer, (B, L, D) -> (B, L, D): y = GLU(Linear(GELU(K * u + D u))).

    Per channel h, x' = A x + B u with diagonal complex A = -exp(log_A_real) + i A_imag
    (N/2 conjugate pairs, B = 1 folded into C), discretised by zero-order hold with a learned
    step dt. Its convolution kernel K[l] = 2 Re(sum_n C_n (exp(dt A_n) - 1) / A_n exp(dt A_n l))
    is a Vandermonde product, applied by a causal FFT convolution. `bidirectional` adds a second
    kernel over strictly future inputs; padded positions are zeroed so right padding never
    reaches valid outputs. `budget` is ignored.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        init: str = "lin",
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
    ) -> None:
        super().__init__()
        kernels = d_model * (2 if bidirectional else 1)
        half = d_state // 2
        self.bidirectional = bidirectional
        self.log_dt = nn.Parameter(log_uniform(kernels, dt_min, dt_max))
        self.C = nn.Parameter(torch.view_as_real(torch.randn(kernels, half, dtype=torch.cfloat)))
        self.log_A_real = nn.Parameter(torch.full((kernels, half), math.log(0.5)))
        self.A_imag = nn.Parameter(s4d_imag_init(init, kernels, half))
        self.D = nn.Parameter(torch.randn(d_model))
        self.output = nn.Linear(d_model, 2 * d_model)

    def discretise(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(dt A, C B_bar), both complex (kernels, N/2), with the ZOH B_bar = (exp(dt A) - 1) / A."""
        A = torch.complex(-torch.exp(self.log_A_real), self.A_imag)
        dt_a = A * torch.exp(self.log_dt).unsqueeze(-1)
        return dt_a, torch.view_as_complex(self.C) * torch.expm1(dt_a) / A

    def kernel(self, length: int) -> torch.Tensor:
        """Real kernels (kernels, length): the Vandermonde product over the N/2 modes, factored.

        With z = exp(dt A) and l = j c + i (c about sqrt(L)), z^l = z^(j c) z^i, so the product
        is one batched complex GEMM (kernels, L/c, N/2) @ (kernels, N/2, c): O(N sqrt(L)) memory
        per channel instead of the (kernels, N/2, L) matrix of `vandermonde_kernel_ref` (4.7 GB per
        layer at L = 16000, width 1136), and a GEMM instead of N L complex exponentials per channel.
        """
        dt_a, cb = self.discretise()
        block = math.isqrt(length - 1) + 1  # c >= sqrt(L), so L/c <= c blocks
        blocks = -(-length // block)
        steps = torch.arange(block, device=dt_a.device, dtype=dt_a.real.dtype)
        within = torch.exp(dt_a.unsqueeze(-1) * steps)  # (kernels, N/2, c): z^i
        starts = torch.exp(dt_a.unsqueeze(1) * (block * steps[:blocks]).unsqueeze(-1))  # (kernels, L/c, N/2)
        return 2 * torch.bmm(cb.unsqueeze(1) * starts, within).flatten(1)[:, :length].real

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None
    ) -> torch.Tensor:
        x = zero_padding(x, mask)
        length = x.shape[1]
        nfft = fast_fft_size(2 * length - 1)
        k = self.kernel(length)
        if self.bidirectional:  # future lags 1..L-1 wrap to the end of the FFT buffer
            forward, backward = k.chunk(2, dim=0)
            gap = k.new_zeros(forward.shape[0], nfft - 2 * length + 1)
            k = torch.cat([forward, gap, backward[:, : length - 1].flip(-1)], dim=-1)
        y = depthwise_fft_conv(x, k, nfft) + x * self.D
        return F.glu(self.output(F.gelu(y)), dim=-1)


@records_init_args
class S4D(SequenceBackbone):
    """S4D backbone: (B, L, D) -> (B, L, D); causal unless `bidirectional`; k_max None.

    Blocks are S4-style, mixer only (ffn_mult=0: the GLU output projection is the channel mixer).
    The SSM parameters (log_dt, log_A_real, A_imag, C) are meant for a smaller learning rate
    and no weight decay, as in the S4 recipe (configured in the training module).
    """

    def __init__(
        self,
        d_model: int = 256,
        n_layers: int = 4,
        d_state: int = 64,
        init: str = "lin",
        bidirectional: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        ffn_mult: int = 0,
        dropout: float = 0.1,
        drop_path: float = 0.05,
    ) -> None:
        def mixer(_: int) -> S4DMixer:
            return S4DMixer(d_model, d_state, init, bidirectional, dt_min, dt_max)

        super().__init__(mixer, d_model, n_layers, ffn_mult, dropout, drop_path)
