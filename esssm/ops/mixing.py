"""The spectral-mixing kernel of ESSSMLayer: blocked FFT convolutions feeding chunked GEMMs,
with a hand-derived backward that stores at most the convolutions.

It computes the same function as `esssm.ops.reference.reference_mixing` (the formula written
plainly, docs/design.md section 1) in less time and memory: one input FFT per pass, the k*D
convolutions in cache-sized blocks, and one (B*L, c*D) x (c*D, D) GEMM per chunk of c channels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from esssm.ops.gemm import batched_matmul
from esssm.spectral import check_fft_size, convolve_block, fft_dtype, padded_rfft


# Working-set targets: an FFT block (complex product + real output, 8 bytes per sample in
# float32) and a weighted chunk (the GEMM operand). On CPU both stay in L3: on one thread
# 2-4 MiB blocks were fastest, 8 MiB 6% and 16 MiB up to 50% slower, 64 MiB 2-3x slower.
# On a GPU they only need to be large enough to keep the kernels big.
_CPU_BLOCK_BYTES, _CPU_CHUNK_BYTES = 4 << 20, 16 << 20
_GPU_BLOCK_BYTES, _GPU_CHUNK_BYTES = 1 << 30, 1 << 30


@dataclass(frozen=True)
class MixPlan:
    """How one pass cuts its work: FFT size, channels per GEMM, signals per FFT block.

    chunk: channels whose weighted signals form one (B*L, chunk*D) x (chunk*D, D) GEMM;
    rows: signals convolved per FFT block; checkpoint: recompute the convolutions in backward
    instead of storing (B, k, D, L); gemm_dtype: dtype of the mixing GEMM (bf16/fp16 under
    autocast), while FFTs and the weighting stay in float32 (float64 for float64 inputs).
    """

    nfft: int
    chunk: int
    rows: int
    checkpoint: bool = False
    gemm_dtype: torch.dtype = torch.float32

    @staticmethod
    def for_input(
        shape: torch.Size,
        k: int,
        nfft: int,
        gemm_dtype: torch.dtype,
        channel_chunk: int | None = None,
        checkpoint: bool = False,
        device_type: str = "cpu",
    ) -> MixPlan:
        """Sizes from the working-set targets for an input of `shape` (B, L, D) at budget k."""
        batch, length, d = shape
        gpu = device_type != "cpu"
        block_bytes, chunk_bytes = (
            (_GPU_BLOCK_BYTES, _GPU_CHUNK_BYTES) if gpu else (_CPU_BLOCK_BYTES, _CPU_CHUNK_BYTES)
        )
        chunk = channel_chunk or max(1, chunk_bytes // (4 * batch * d * length))
        rows = max(1, block_bytes // (8 * nfft))
        return MixPlan(nfft, min(chunk, k), rows, checkpoint, gemm_dtype)


def gemm_dtype(u: torch.Tensor) -> torch.dtype:
    """The mixing GEMM's dtype for input u: autocast's (bf16/fp16) where it is on, else u's."""
    if torch.is_autocast_enabled(u.device.type) and u.dtype != torch.float64:
        return torch.get_autocast_dtype(u.device.type)
    return u.dtype


def spectral_mixing(
    u: torch.Tensor, weights: torch.Tensor, mix: torch.Tensor, spectra: torch.Tensor, plan: MixPlan
) -> torch.Tensor:
    """sum_j weights_j(t) M_j (phi_j * u)(t) over the k active channels -> (B, L, D).

    u (B, L, D); weights (B, L, k) (gate times sigma^(1/4)); mix (k, D_in, D_out) = M^T;
    spectra (k, F). Returned in the FFT dtype (float32, or float64 for float64 inputs).
    Memory beyond the output is one chunk of weighted signals plus, when a gradient is needed
    and plan.checkpoint is off, the (B, k, D, L) convolutions.

    The kernel runs as two opaque torch.library ops (`esssm::mix_forward`, `esssm::mix_backward`)
    with shape-only fake kernels, so torch.compile and torch.export trace around it.
    """
    dtype = fft_dtype(u.dtype)
    with torch.autocast(u.device.type, enabled=False):
        u32 = u.to(dtype)
        at = weights.to(dtype).transpose(1, 2).contiguous()  # (B, k, L): time contiguous
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (u, weights, mix))
        save = needs_grad and not plan.checkpoint
        out, _ = mix_forward(u32, at, mix, spectra, plan.nfft, plan.chunk, plan.rows, save, plan.gemm_dtype)
        return out


@torch.library.custom_op("esssm::mix_forward", mutates_args=())
def mix_forward(
    u: torch.Tensor, at: torch.Tensor, mix: torch.Tensor, spectra: torch.Tensor,
    nfft: int, chunk: int, rows: int, save: bool, gemm_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, L, D) and, when `save`, the convolutions (B, k, D, L) that backward reuses
    (else an empty tensor: backward recomputes them). at (B, k, L): the weights, time contiguous."""
    plan = MixPlan(nfft, chunk, rows, not save, gemm_dtype)
    return _mix_forward(u, at, mix, spectra, plan, save)


@mix_forward.register_fake
def _(u, at, mix, spectra, nfft, chunk, rows, save, gemm_dtype):
    batch, length, d = u.shape
    out = u.new_empty(batch, d, length).transpose(1, 2)  # the real kernel's layout
    convs = u.new_empty(batch, at.shape[1], d, length) if save else u.new_empty(0)
    return out, convs


@torch.library.custom_op("esssm::mix_backward", mutates_args=())
def mix_backward(
    grad: torch.Tensor, u: torch.Tensor, at: torch.Tensor, mix: torch.Tensor, spectra: torch.Tensor,
    convs: torch.Tensor, nfft: int, chunk: int, rows: int, gemm_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(du (B, L, D), d_at (B, k, L), d_mix (k, D, D)) of `mix_forward` given grad (B, L, D)."""
    plan = MixPlan(nfft, chunk, rows, convs.numel() == 0, gemm_dtype)
    return _mix_backward(grad, u, at, mix, spectra, plan, convs)


@mix_backward.register_fake
def _(grad, u, at, mix, spectra, convs, nfft, chunk, rows, gemm_dtype):
    return torch.empty_like(u), torch.empty_like(at), torch.empty_like(mix)


def _setup_backward(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    u, at, mix, spectra, nfft, chunk, rows, _, gemm_dtype = inputs
    ctx.save_for_backward(u, at, mix, spectra, output[1])
    ctx.sizes = (nfft, chunk, rows, gemm_dtype)


def _backward(ctx, grad, _grad_convs):  # type: ignore[no-untyped-def]
    du, d_at, d_mix = mix_backward(grad, *ctx.saved_tensors, *ctx.sizes)
    return du, d_at, d_mix, None, None, None, None, None, None


mix_forward.register_autograd(_backward, setup_context=_setup_backward)


def _chunks(k: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(k, s + chunk)) for s in range(0, k, chunk)]


def convolve_chunk(
    u_hat: torch.Tensor,
    spectra: torch.Tensor,
    at: torch.Tensor,
    plan: MixPlan,
    conv: torch.Tensor | None,
    weighted: torch.Tensor | None,
) -> None:
    """Fill conv (B, c, D, L) = phi_j * u and/or weighted = conv * at, one FFT block at a time.

    u_hat (B, 1, D, F); spectra (c, F); at (B, c, L). Blocks keep the complex product and the
    2L-long inverse FFT in cache; only the first L samples are written out.
    """
    target = conv if conv is not None else weighted
    batch, channels, d, length = target.shape
    for b, c, f in signal_blocks(batch, channels, d, plan.rows):
        block = convolve_block(u_hat[b, :, f], spectra[None, c, None, :], plan.nfft)[..., :length]
        if conv is not None:
            block = conv[b, c, f].copy_(block)
        if weighted is not None:
            torch.mul(block, at[b, c].unsqueeze(2), out=weighted[b, c, f])


def _mix_forward(
    u: torch.Tensor,
    at: torch.Tensor,
    mix: torch.Tensor,
    spectra: torch.Tensor,
    plan: MixPlan,
    save: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output (B, L, D) and, when save, the convolutions (B, k, D, L) for backward (else empty).

    Each chunk's GEMM computes out^T (B, D, L) += M_c (D, c*D) @ W_c (B, c*D, L): the weighted
    signals are used in their time-contiguous layout, and one transpose view ends the pass.
    """
    batch, length, d = u.shape
    check_fft_size(length, plan.nfft)
    u_hat = padded_rfft(u.transpose(1, 2), plan.nfft).unsqueeze(1)  # (B, 1, D, F)
    buffer = u.new_empty(batch, plan.chunk, d, length, dtype=plan.gemm_dtype)
    convs = u.new_empty(batch, at.shape[1], d, length) if save else u.new_empty(0)
    out_t = None
    for s, e in _chunks(at.shape[1], plan.chunk):
        weighted = buffer[:, : e - s]
        convolve_chunk(u_hat, spectra[s:e], at[:, s:e], plan, convs[:, s:e] if save else None, weighted)
        mix_t = mix[s:e].reshape((e - s) * d, d).t().to(plan.gemm_dtype)  # (D, c*D)
        part = batched_matmul(mix_t, weighted.view(batch, (e - s) * d, length))
        out_t = part.to(u.dtype) if out_t is None else out_t.add_(part)
    return out_t.transpose(1, 2), convs


def _mix_backward(
    grad: torch.Tensor,
    u: torch.Tensor,
    at: torch.Tensor,
    mix: torch.Tensor,
    spectra: torch.Tensor,
    plan: MixPlan,
    convs: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (du (B, L, D), d_at (B, k, L), d_mix (k, D, D)) given grad (B, L, D) and the
    saved convolutions (B, k, D, L), or an empty tensor to recompute them (plan.checkpoint).

    Per chunk: d_mix = W G and dW = M G^T (two GEMMs the size of the forward one),
    d_at = <dW, conv> over D, dconv = dW * at. du = sum_j phi_j (x) dconv_j is a correlation:
    irfft(sum_j conj(S_j) rfft(dconv_j)), the inverse FFT done once for all channels.
    """
    batch, length, d = u.shape
    g = grad.to(plan.gemm_dtype).contiguous()  # e.g. sum().backward() gives an expanded grad
    g_t = g.transpose(1, 2).contiguous()  # (B, D, L)
    u_hat = padded_rfft(u.transpose(1, 2), plan.nfft).unsqueeze(1) if plan.checkpoint else None
    du_hat = u.new_zeros(batch, d, plan.nfft // 2 + 1, dtype=spectra.dtype)
    d_at, d_mix = torch.zeros_like(at), torch.zeros_like(mix)
    for s, e in _chunks(at.shape[1], plan.chunk):
        conv = _recompute(u_hat, spectra[s:e], at[:, s:e], plan) if plan.checkpoint else convs[:, s:e]
        a = at[:, s:e].unsqueeze(2)  # (B, c, 1, L)
        flat = (conv * a).to(plan.gemm_dtype).view(batch, (e - s) * d, length)
        d_mix[s:e] = batched_matmul(flat, g_t.mT).sum(0).view(e - s, d, d)
        mix_flat = mix[s:e].reshape((e - s) * d, d).to(plan.gemm_dtype)
        d_conv = batched_matmul(mix_flat, g.mT).view(batch, e - s, d, length).to(u.dtype)
        d_at[:, s:e] = (d_conv * conv).sum(2)
        _correlate_accumulate(du_hat, d_conv.mul_(a), spectra[s:e], plan)
    du = torch.fft.irfft(du_hat, n=plan.nfft, dim=-1)[..., :length].transpose(1, 2).contiguous()
    return du, d_at, d_mix


def _recompute(
    u_hat: torch.Tensor, spectra: torch.Tensor, at: torch.Tensor, plan: MixPlan
) -> torch.Tensor:
    """The chunk's convolutions (B, c, D, L) again, for backward under checkpointing."""
    conv = at.new_empty(u_hat.shape[0], spectra.shape[0], u_hat.shape[2], at.shape[-1])
    convolve_chunk(u_hat, spectra, at, plan, conv, None)
    return conv


def _correlate_accumulate(
    du_hat: torch.Tensor, d_conv: torch.Tensor, spectra: torch.Tensor, plan: MixPlan
) -> None:
    """du_hat (B, D, F) += sum_c conj(S_c) rfft(d_conv[:, c]) in FFT blocks; d_conv (B, c, D, L)."""
    batch, channels, d, _ = d_conv.shape
    for b, c, f in signal_blocks(batch, channels, d, plan.rows):
        spec = padded_rfft(d_conv[b, c, f], plan.nfft)  # (b, c, d, F)
        if spec.shape[1] == 1:  # one channel: multiply-add in one pass
            du_hat[b, f].addcmul_(spec[:, 0], spectra[c].conj())
        else:
            du_hat[b, f] += (spec * spectra[None, c, None, :].conj()).sum(1)


def signal_blocks(
    batch: int, channels: int, features: int, rows: int
) -> Iterator[tuple[slice, slice, slice]]:
    """Cut the (batch, channels, features) grid of signals into blocks of at most max(rows, 1) signals.

    Each block (b, c, d) is contiguous in a (B, C, D, L) tensor, so a block's FFT buffers stay
    in cache (CPU) or amount to a few large kernels (GPU): below `features` rows a block is a
    feature range of one (sample, channel); below `channels * features` a channel range of
    one sample; otherwise a range of whole samples.
    """
    rows = max(rows, 1)
    if rows < features:
        for b in range(batch):
            for c in range(channels):
                for d in range(0, features, rows):
                    yield slice(b, b + 1), slice(c, c + 1), slice(d, d + rows)
    elif rows < channels * features:
        step = rows // features
        for b in range(batch):
            for c in range(0, channels, step):
                yield slice(b, b + 1), slice(c, c + step), slice(None)
    else:
        step = rows // (channels * features)
        for b in range(0, batch, step):
            yield slice(b, b + step), slice(None), slice(None)
