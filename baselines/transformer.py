"""Transformer encoder baseline: pre-norm blocks around scaled-dot-product self-attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from esssm.model import SequenceBackbone, records_init_args

POSITIONS = ("sinusoidal", "learned")


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """(max_len, d_model) table: sin on even features, cos on odd ones (Vaswani et al. 2017)."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)[:, : d_model // 2]
    return table


class SelfAttention(nn.Module):
    """Multi-head self-attention, (B, L, D) -> (B, L, D), via F.scaled_dot_product_attention
    (flash / memory-efficient kernels on GPU).

    Bidirectional: `mask` (B, L), True = valid, hides padded keys. Causal: attention is
    restricted to keys s <= t and `mask` is not needed, since right padding follows every
    valid token (passing no mask keeps the flash kernel available). `budget` is ignored.
    """

    def __init__(self, d_model: int, n_heads: int, causal: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be a multiple of n_heads={n_heads}")
        self.n_heads, self.causal, self.dropout = n_heads, causal, dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None
    ) -> torch.Tensor:
        q, k, v = self.qkv(x).unflatten(-1, (3, self.n_heads, -1)).permute(2, 0, 3, 1, 4)
        keys = None
        if mask is not None and not self.causal:
            # A sequence with no valid token attends everywhere rather than producing NaN.
            keys = (mask | ~mask.any(dim=-1, keepdim=True))[:, None, None, :]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=keys, dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal,
        )
        return self.out(y.transpose(1, 2).flatten(2))


@records_init_args
class Transformer(SequenceBackbone):
    """Pre-norm Transformer encoder, (B, L, D) -> (B, L, D); no spectral budget (k_max None).

    Positions (sinusoidal table or learned embedding, up to `max_len`) are added to the input
    before the blocks; each block is attention + FFN (ffn_mult=4). `causal=True` gives a
    decoder-style (causal) encoder.
    """

    def __init__(
        self,
        d_model: int = 256,
        n_layers: int = 4,
        n_heads: int = 4,
        max_len: int = 2048,
        positions: str = "sinusoidal",
        causal: bool = False,
        ffn_mult: int = 4,
        dropout: float = 0.1,
        attn_dropout: float = 0.0,
        drop_path: float = 0.05,
    ) -> None:
        if positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")

        def mixer(_: int) -> SelfAttention:
            return SelfAttention(d_model, n_heads, causal, attn_dropout)

        super().__init__(mixer, d_model, n_layers, ffn_mult, dropout, drop_path)
        self.max_len, self.causal = max_len, causal
        if positions == "learned":
            self.positions = nn.Parameter(torch.randn(max_len, d_model) * 0.02)
        else:
            self.register_buffer("positions", sinusoidal_positions(max_len, d_model), persistent=False)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None
    ) -> torch.Tensor:
        if x.dim() == 3 and x.shape[1] > self.max_len:
            raise ValueError(f"input length {x.shape[1]} exceeds max_len={self.max_len}")
        return super().forward(x + self.positions[: x.shape[1]].to(x.dtype), mask, budget)
