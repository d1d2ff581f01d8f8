"""Diagonal linear recurrences h_t = a_t * h_{t-1} + b_t (h_{-1} = 0) solved in log depth.

`linear_scan` is a Brent-Kung (Blelloch up-sweep/down-sweep) scan over time done in place on
strided views: 2 log2(L) vectorised steps, O(L) work, no Python loop over time.
`selective_scan` is Mamba's selective SSM built on it, with a hand-written backward that
recomputes the (B, L, D, N) states instead of storing them, so a layer keeps only its
(B, L, D) and (B, L, N) inputs for backward. The *_ref functions are plain sequential loops,
kept as the references the tests compare against.
"""

from __future__ import annotations

import torch

from baselines.common import pad_time

# One scan pass handles at most this many state elements (B * L * channels * N): 2^27 float32
# values are 512 MiB, and backward holds about five such tensors at once.
MAX_SCAN_ELEMENTS = 1 << 27


def _blocks(x: torch.Tensor, size: int) -> torch.Tensor:
    """View (B, L, ...) as (B, L / size, size, ...) without a copy."""
    return x.view(x.shape[0], x.shape[1] // size, size, *x.shape[2:])


def _scan_pow2_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """In-place scan of contiguous (B, L, ...) with L a power of two; b becomes h, a is clobbered.

    Combining (a1, b1) then (a2, b2) gives (a1 a2, a2 b1 + b2). Up-sweep: every aligned block
    of 2^(d+1) steps folds its left half into its last element. Down-sweep: the last element of
    each left half takes the full prefix from the end of the previous block.
    """
    levels = a.shape[1].bit_length() - 1
    for d in range(levels):
        av, bv, half = _blocks(a, 2 << d), _blocks(b, 2 << d), 1 << d
        bv[:, :, -1].addcmul_(av[:, :, -1], bv[:, :, half - 1])
        av[:, :, -1].mul_(av[:, :, half - 1])
    for d in reversed(range(levels - 1)):
        av, bv, half = _blocks(a, 2 << d), _blocks(b, 2 << d), 1 << d
        bv[:, 1:, half - 1].addcmul_(av[:, 1:, half - 1], bv[:, :-1, -1])
    return b


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """h (B, L, ...) with h_t = a_t h_{t-1} + b_t, scanning dim 1. No autograd: forward only.

    Consumes a and b when they are contiguous with a power-of-two length (callers pass fresh
    tensors); otherwise works on zero-padded copies.
    """
    length = a.shape[1]
    size = 1 << (length - 1).bit_length()
    if size != length or not (a.is_contiguous() and b.is_contiguous()):
        a, b = pad_time(a, size).contiguous(), pad_time(b, size).contiguous()
    with torch.no_grad():
        return _scan_pow2_(a, b)[:, :length]


def linear_scan_ref(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sequential reference for `linear_scan` (differentiable, O(L) Python steps)."""
    h, out = torch.zeros_like(b[:, 0]), []
    for t in range(a.shape[1]):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def _discretise(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ZOH decay a = exp(dt A) and Euler input b = dt u B, both (B, L, D, N)."""
    a = (dt.unsqueeze(-1) * A).exp_()
    b = (dt * u).unsqueeze(-1) * B.unsqueeze(2)
    return a, b


def _scan_forward(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """y (B, L, d) for one channel slice; the (B, L, d, N) states live only inside this call."""
    a, b = _discretise(u, dt, A, B)
    return torch.einsum("bldn,bln->bld", linear_scan(a, b), C)


def _scan_backward(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    grad_y: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Gradients of y = sum_n C h for one channel slice, recomputing h.

    The adjoint of h_t = a_t h_{t-1} + b_t is g_t = dL/dh_t + a_{t+1} g_{t+1}, a reverse scan;
    then dL/db_t = g_t and dL/da_t = g_t h_{t-1}.
    """
    a, b = _discretise(u, dt, A, B)
    h = linear_scan(a.clone(), b)
    grad_C = torch.einsum("bldn,bld->bln", h, grad_y)
    # The reverse scan runs on time-flipped tensors; flipped a_{t+1} is [0, a_{L-1}, ..., a_1].
    a_next = torch.cat([torch.zeros_like(a[:, :1]), a[:, 1:].flip(1)], dim=1)
    g = linear_scan(a_next, (grad_y.unsqueeze(-1) * C.unsqueeze(2)).flip(1)).flip(1)
    del a_next
    grad_dtu = torch.einsum("bldn,bln->bld", g, B)  # dL/d(dt u)
    grad_B = torch.einsum("bldn,bld->bln", g, dt * u)
    g[:, 1:].mul_(h[:, :-1])  # g becomes dL/da_t = g_t h_{t-1} (h_{-1} = 0) ...
    g[:, 0].zero_()
    del h
    grad_log_a = g.mul_(a)  # ... then dL/d(dt A) = dL/da * a
    grad_A = torch.einsum("bldn,bld->dn", grad_log_a, dt)
    grad_dt = torch.einsum("bldn,dn->bld", grad_log_a, A)
    return grad_dtu * dt, grad_dt + grad_dtu * u, grad_A, grad_B, grad_C

class _SelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, dt, A, B, C, chunk: int):  # type: ignore[override]
        ctx.save_for_backward(u, dt, A, B, C)
        ctx.chunk = chunk
        parts = [_scan_forward(*s, B, C) for s in _channel_slices(chunk, u, dt, A)]
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad_y):  # type: ignore[override]
        u, dt, A, B, C = ctx.saved_tensors
        grads = [
            _scan_backward(us, dts, As, B, C, gs)
            for us, dts, As, gs in _channel_slices(ctx.chunk, u, dt, A, grad_y)
        ]
        du, ddt, dA, dB, dC = zip(*grads)
        return (
            torch.cat(du, -1), torch.cat(ddt, -1), torch.cat(dA, 0), sum(dB), sum(dC), None
        )


def _channel_slices(chunk: int, u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, *rest):
    """Yield (u, dt, A, *rest) restricted to consecutive groups of `chunk` channels."""
    for start in range(0, u.shape[-1], chunk):
        sl = slice(start, start + chunk)
        yield (u[..., sl], dt[..., sl], A[sl], *(r[..., sl] for r in rest))


def selective_scan(
    u: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    channel_chunk: int | None = None,
) -> torch.Tensor:
    """Mamba's selective SSM, y_t = C_t . h_t with h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t.

    u, dt: (B, L, D); A: (D, N) (negative); B, C: (B, L, N). Returns y (B, L, D), without the
    D-skip. Runs in float32 (float64 stays float64) with autocast off. `channel_chunk` channels
    are scanned per pass (default: as many as keep one (B, L, chunk, N) state under
    MAX_SCAN_ELEMENTS), bounding peak memory at any batch size and length.
    """
    batch, length, channels = u.shape
    if channel_chunk is None:
        channel_chunk = max(1, MAX_SCAN_ELEMENTS // (batch * length * A.shape[-1]))
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    with torch.autocast(u.device.type, enabled=False):
        args = [t.to(dtype) for t in (u, dt, A, B, C)]
        y = _SelectiveScan.apply(*args, min(channel_chunk, channels))
    return y.to(u.dtype)


def selective_scan_ref(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """Sequential reference for `selective_scan` (plain autograd through a loop over time)."""
    a, b = _discretise(u, dt, A, B)
    return torch.einsum("bldn,bln->bld", linear_scan_ref(a, b), C)
