"""Mamba (Mamba-1) baseline: the selective-SSM block in pure PyTorch with a parallel scan."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from baselines.common import CausalConv1d, dt_bias_init
from baselines.scan import selective_scan
from esssm.model import SequenceBackbone, records_init_args


class MambaMixer(nn.Module):
    """Selective SSM block (Gu & Dao 2023), (B, L, D) -> (B, L, D), causal.

    in_proj -> (x, z); x -> causal depthwise conv -> SiLU -> x_proj -> (dt, B, C);
    dt = softplus(dt_proj(dt)); y = selective_scan(x, dt, A, B, C) + D x; out_proj(y * SiLU(z)).
    A = -exp(A_log) with the S4D-real init A_n = -(n + 1). `mask` and `budget` are ignored:
    the block is causal, so right padding never reaches valid positions.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        channel_chunk: int | None = None,
    ) -> None:
        super().__init__()
        d_inner = expand * d_model
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.d_state, self.channel_chunk = d_state, channel_chunk
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv = CausalConv1d(d_inner, d_conv)
        self.x_proj = nn.Linear(d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d_inner)
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt_bias_init(d_inner))
        a_init = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a_init))  # (d_inner, N)
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None
    ) -> torch.Tensor:
        u, z = self.in_proj(x).chunk(2, dim=-1)
        u = F.silu(self.conv(u))
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))
        y = selective_scan(u, dt, -torch.exp(self.A_log), B, C, self.channel_chunk)
        return self.out_proj((y + u * self.D) * F.silu(z))


@records_init_args
class Mamba(SequenceBackbone):
    """Mamba backbone: (B, L, D) -> (B, L, D), causal; no spectral budget (k_max None).

    Blocks are the usual Mamba ones, mixer only (ffn_mult=0), with this project's pre-norm
    LayerNorm residual and stochastic depth. `channel_chunk` bounds the scan's memory
    (see `baselines.scan.selective_scan`).
    """

    def __init__(
        self,
        d_model: int = 256,
        n_layers: int = 4,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        ffn_mult: int = 0,
        dropout: float = 0.1,
        drop_path: float = 0.05,
        channel_chunk: int | None = None,
    ) -> None:
        def mixer(_: int) -> MambaMixer:
            return MambaMixer(d_model, d_state, d_conv, expand, dt_rank, channel_chunk)

        super().__init__(mixer, d_model, n_layers, ffn_mult, dropout, drop_path)
