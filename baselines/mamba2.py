"""Mamba-2 baseline: the SSD block in pure PyTorch (chunked state-space-duality form)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from baselines.common import CausalConv1d, dt_bias_init, pad_time
from esssm.model import SequenceBackbone, records_init_args


def segsum(x: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T) with out[i, j] = x[j+1] + ... + x[i] for i >= j, -inf above.

    exp(segsum(log a)) is the lower-triangular decay matrix prod_{j < r <= i} a_r, built from
    masked cumulative sums rather than differences of one cumsum, which lose precision.
    """
    size = x.shape[-1]
    ones = torch.ones(size, size, dtype=torch.bool, device=x.device)
    sums = x.unsqueeze(-1).expand(*x.shape, size).masked_fill(~ones.tril(-1), 0.0).cumsum(dim=-2)
    return sums.masked_fill(~ones.tril(0), float("-inf"))


def ssd(
    x: torch.Tensor,
    log_a: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
) -> torch.Tensor:
    """Chunked SSD scan: h_t = exp(log_a_t) h_{t-1} + x_t B_t^T, y_t = h_t C_t, per head.

    x: (B, L, H, P) (inputs already times dt); log_a: (B, L, H) (= dt A <= 0);
    B, C: (B, L, N), shared by all heads (one group). Returns y (B, L, H, P).
    Quadratic attention-like form inside chunks of `chunk_size`, a recurrence over the
    L / chunk_size chunk states between them (Dao & Gu 2024, "minimal SSD").
    """
    length = x.shape[1]
    x, log_a, B, C = (pad_time(t, chunk_size) for t in (x, log_a, B, C))  # zero: no decay, no input
    x, B, C = (t.unflatten(1, (-1, chunk_size)) for t in (x, B, C))  # (B, c, T, ...)
    log_a = log_a.unflatten(1, (-1, chunk_size)).permute(0, 3, 1, 2)  # (B, H, c, T)
    cum = log_a.cumsum(dim=-1)

    decay = torch.exp(segsum(log_a))  # (B, H, c, T, T)
    scores = torch.einsum("bctn,bcsn->bcts", C, B)
    y_diag = torch.einsum("bcts,bhcts,bcshp->bcthp", scores, decay, x)

    decay_to_end = torch.exp(cum[..., -1:] - cum)  # (B, H, c, T)
    states = torch.einsum("bcsn,bhcs,bcshp->bchpn", B, decay_to_end, x)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    chunk_decay = torch.exp(segsum(F.pad(cum[..., -1], (1, 0))))  # (B, H, c+1, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay, states)[:, :-1]  # entering each chunk
    y_off = torch.einsum("bctn,bchpn,bhct->bcthp", C, states, torch.exp(cum))
    return (y_diag + y_off).flatten(1, 2)[:, :length]


def ssd_ref(x: torch.Tensor, log_a: torch.Tensor, B: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """Sequential reference for `ssd`: a loop over time with a (B, H, P, N) state."""
    h = x.new_zeros(*x.shape[:1], *x.shape[2:], B.shape[-1])
    out = []
    for t in range(x.shape[1]):
        h = torch.exp(log_a[:, t, :, None, None]) * h + x[:, t, ..., None] * B[:, t, None, None]
        out.append(torch.einsum("bhpn,bn->bhp", h, C[:, t]))
    return torch.stack(out, dim=1)


class Mamba2Mixer(nn.Module):
    """Mamba-2 block (one B/C group), (B, L, D) -> (B, L, D), causal.

    in_proj -> (z, xBC, dt); xBC -> causal depthwise conv -> SiLU -> (x, B, C);
    dt = softplus(dt + dt_bias); per-head scalar A = -exp(A_log);
    y = SSD(x dt, dt A, B, C) + D x; out_proj(RMSNorm(y * SiLU(z))). `mask`/`budget` ignored
    (causal: right padding never reaches valid positions).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 32,
        chunk_size: int = 64,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        if d_inner % headdim:
            raise ValueError(f"expand * d_model = {d_inner} must be a multiple of headdim={headdim}")
        self.d_inner, self.d_state, self.headdim = d_inner, d_state, headdim
        self.n_heads, self.chunk_size = d_inner // headdim, chunk_size
        self.in_proj = nn.Linear(d_model, 2 * d_inner + 2 * d_state + self.n_heads, bias=False)
        self.conv = CausalConv1d(d_inner + 2 * d_state, d_conv)
        self.dt_bias = nn.Parameter(dt_bias_init(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads).uniform_(1.0, 16.0).log())
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = nn.RMSNorm(d_inner, eps=1e-5)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None
    ) -> torch.Tensor:
        sizes = [self.d_inner, self.d_inner + 2 * self.d_state, self.n_heads]
        z, xbc, dt = self.in_proj(x).split(sizes, dim=-1)
        u, B, C = F.silu(self.conv(xbc)).split([self.d_inner, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (B, L, H)
        u = u.unflatten(-1, (self.n_heads, self.headdim))  # (B, L, H, P)
        y = ssd(u * dt.unsqueeze(-1), dt * -torch.exp(self.A_log), B, C, self.chunk_size)
        y = (y + u * self.D.unsqueeze(-1)).flatten(2)
        return self.out_proj(self.norm(y * F.silu(z)))


@records_init_args
class Mamba2(SequenceBackbone):
    """Mamba-2 backbone: (B, L, D) -> (B, L, D), causal; no spectral budget (k_max None).

    Mixer-only blocks (ffn_mult=0) as in Mamba-2, with the project's pre-norm residual.
    Needs expand * d_model to be a multiple of headdim.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_layers: int = 4,
        d_state: int = 64,
        d_conv: int = 4,
        expand: int = 2,
        headdim: int = 32,
        chunk_size: int = 64,
        ffn_mult: int = 0,
        dropout: float = 0.1,
        drop_path: float = 0.05,
    ) -> None:
        def mixer(_: int) -> Mamba2Mixer:
            return Mamba2Mixer(d_model, d_state, d_conv, expand, headdim, chunk_size)

        super().__init__(mixer, d_model, n_layers, ffn_mult, dropout, drop_path)
