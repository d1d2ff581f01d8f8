"""The elastic spectral SSM layer: one trained layer, evaluated at any budget k <= k_max."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from esssm.spectral import (
    check_fft_size,
    convolve_block,
    fast_fft_size,
    fft_dtype,
    filter_scale,
    filter_spectra,
    padded_rfft,
    signal_blocks,
    spectral_filters,
)


def check_budget(budget: int | None, k_max: int) -> int:
    """Resolve a runtime budget: None means k_max; anything outside [1, k_max] is an error."""
    if budget is None:
        return k_max
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= k_max:
        raise ValueError(
            f"budget must be an int in [1, {k_max}] (or None for the full k_max={k_max}), "
            f"got {budget!r}"
        )
    return budget


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


def spectral_mixing(
    u: torch.Tensor, weights: torch.Tensor, mix: torch.Tensor, spectra: torch.Tensor, plan: MixPlan
) -> torch.Tensor:
    """sum_j weights_j(t) M_j (phi_j * u)(t) over the k active channels -> (B, L, D).

    u (B, L, D); weights (B, L, k) (gate times sigma^(1/4)); mix (k, D_in, D_out) = M^T;
    spectra (k, F). Returned in the FFT dtype (float32, or float64 for float64 inputs).
    Memory beyond the output is one chunk of weighted signals plus, when a gradient is needed
    and plan.checkpoint is off, the (B, k, D, L) convolutions.
    """
    dtype = fft_dtype(u.dtype)
    with torch.autocast(u.device.type, enabled=False):
        u32 = u.to(dtype)
        at = weights.to(dtype).transpose(1, 2).contiguous()  # (B, k, L): time contiguous
        if torch.is_grad_enabled() and any(t.requires_grad for t in (u, weights, mix)):
            return _SpectralMixing.apply(u32, at, mix, spectra, plan)
        return _mix_forward(u32, at, mix, spectra, plan, save=False)[0]


class _SpectralMixing(torch.autograd.Function):
    """Autograd for `spectral_mixing`: stores only the convolutions (nothing but the inputs
    with checkpointing) and computes the gradients chunk by chunk with the same blocked FFTs."""

    @staticmethod
    def forward(ctx, u, at, mix, spectra, plan):  # type: ignore[override]
        out, convs = _mix_forward(u, at, mix, spectra, plan, save=not plan.checkpoint)
        ctx.plan, ctx.convs = plan, convs
        ctx.save_for_backward(u, at, mix, spectra)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        u, at, mix, spectra = ctx.saved_tensors
        du, d_at, d_mix = _mix_backward(grad, u, at, mix, spectra, ctx.plan, ctx.convs)
        ctx.convs = None
        return du, d_at, d_mix, None, None


def _chunks(k: int, chunk: int) -> list[tuple[int, int]]:
    return [(s, min(k, s + chunk)) for s in range(0, k, chunk)]


def _convolve_chunk(
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


def _onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_ONEDNN = {"ok": _onednn_linear_available()}


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (m, k) @ b (n, k)^T -> (m, n); CPU float32 through oneDNN, operands as strided views.

    oneDNN's AVX-512 kernels run the mixing GEMMs about 2.2x faster than MKL's sgemm on AMD
    CPUs, where MKL falls back to its AVX2 path (docs/benchmarks.md). Should the private op
    ever fail, this switches to the plain matmul for the rest of the process.
    """
    if _onednn_ok(a, b):
        try:
            return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
        except (RuntimeError, AttributeError, TypeError):
            _ONEDNN["ok"] = False
    return a @ b.mT


def _onednn_ok(*tensors: torch.Tensor) -> bool:
    """CPU float32 operands, and not inside torch.jit.trace (which cannot record the custom
    autograd function around the private op: traced exports use the plain ops)."""
    cpu32 = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    return _ONEDNN["ok"] and cpu32 and not torch.jit.is_tracing()


class _Linear(torch.autograd.Function):
    """F.linear with its three products through `matmul_nt` (oneDNN on CPU float32)."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        out = matmul_nt(x.reshape(-1, x.shape[-1]), weight)
        if bias is not None:
            out += bias
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        g = grad.reshape(-1, grad.shape[-1]).contiguous()
        dx = matmul_nt(g, weight.t()).view_as(x) if ctx.needs_input_grad[0] else None
        dw = matmul_nt(g.t(), x.reshape(-1, x.shape[-1]).t()) if ctx.needs_input_grad[1] else None
        db = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dw, db


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear (x (..., in) -> (..., out)); on CPU float32 outside autocast through oneDNN,
    about 2x MKL's sgemm on AMD CPUs (see `matmul_nt`), with the same gradients."""
    if torch.is_autocast_enabled(x.device.type) or not _onednn_ok(x, weight):
        return F.linear(x, weight, bias)
    return _Linear.apply(x, weight, bias)


def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b -> (B, m, n) for a (B, m, k) or (m, k) and b (B, k, n) or (k, n), one of them batched.

    Transposed operands stay views: CPU float32 runs one oneDNN GEMM per sample (CPU batches
    are small), everything else one bmm.
    """
    batch = (a if a.dim() == 3 else b).shape[0]
    a3 = a if a.dim() == 3 else a.expand(batch, -1, -1)
    b3 = b if b.dim() == 3 else b.expand(batch, -1, -1)
    if not _onednn_ok(a, b):
        return torch.bmm(a3, b3)
    outs = [matmul_nt(a3[i], b3[i].mT) for i in range(batch)]
    return outs[0].unsqueeze(0) if batch == 1 else torch.stack(outs)


def _mix_forward(
    u: torch.Tensor,
    at: torch.Tensor,
    mix: torch.Tensor,
    spectra: torch.Tensor,
    plan: MixPlan,
    save: bool,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Output (B, L, D) and, when save, the per-chunk convolutions (B, c, D, L) for backward.

    Each chunk's GEMM computes out^T (B, D, L) += M_c (D, c*D) @ W_c (B, c*D, L): the weighted
    signals are used in their time-contiguous layout, and one transpose view ends the pass.
    """
    batch, length, d = u.shape
    check_fft_size(length, plan.nfft)
    u_hat = padded_rfft(u.transpose(1, 2), plan.nfft).unsqueeze(1)  # (B, 1, D, F)
    buffer = u.new_empty(batch, plan.chunk, d, length, dtype=plan.gemm_dtype)
    out_t, convs = None, []
    for s, e in _chunks(at.shape[1], plan.chunk):
        conv = u.new_empty(batch, e - s, d, length) if save else None
        weighted = buffer[:, : e - s]
        _convolve_chunk(u_hat, spectra[s:e], at[:, s:e], plan, conv, weighted)
        mix_t = mix[s:e].reshape((e - s) * d, d).t().to(plan.gemm_dtype)  # (D, c*D)
        part = batched_matmul(mix_t, weighted.view(batch, (e - s) * d, length))
        out_t = part.to(u.dtype) if out_t is None else out_t.add_(part)
        if save:
            convs.append(conv)
    return out_t.transpose(1, 2), convs


def _mix_backward(
    grad: torch.Tensor,
    u: torch.Tensor,
    at: torch.Tensor,
    mix: torch.Tensor,
    spectra: torch.Tensor,
    plan: MixPlan,
    convs: list[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (du (B, L, D), d_at (B, k, L), d_mix (k, D, D)) given grad (B, L, D).

    Per chunk: d_mix = W G and dW = M G^T (two GEMMs the size of the forward one),
    d_at = <dW, conv> over D, dconv = dW * at. du = sum_j phi_j (x) dconv_j is a correlation:
    irfft(sum_j conj(S_j) rfft(dconv_j)), the inverse FFT done once for all channels.
    """
    batch, length, d = u.shape
    g = grad.to(plan.gemm_dtype).contiguous()  # e.g. sum().backward() gives an expanded grad
    g_t = g.transpose(1, 2).contiguous()  # (B, D, L)
    u_hat = None if convs else padded_rfft(u.transpose(1, 2), plan.nfft).unsqueeze(1)
    du_hat = u.new_zeros(batch, d, plan.nfft // 2 + 1, dtype=spectra.dtype)
    d_at, d_mix = torch.zeros_like(at), torch.zeros_like(mix)
    for i, (s, e) in enumerate(_chunks(at.shape[1], plan.chunk)):
        conv = convs[i] if convs else _recompute(u_hat, spectra[s:e], at[:, s:e], plan)
        a = at[:, s:e].unsqueeze(2)  # (B, c, 1, L)
        flat = (conv * a).to(plan.gemm_dtype).view(batch, (e - s) * d, length)
        d_mix[s:e] = batched_matmul(flat, g_t.mT).sum(0).view(e - s, d, d)
        mix_flat = mix[s:e].reshape((e - s) * d, d).to(plan.gemm_dtype)
        d_conv = batched_matmul(mix_flat, g.mT).view(batch, e - s, d, length).to(u.dtype)
        d_at[:, s:e] = (d_conv * conv).sum(2)
        _correlate_accumulate(du_hat, d_conv.mul_(a), spectra[s:e], plan)
    du = torch.fft.irfft(du_hat, n=plan.nfft, dim=-1)[..., :length].transpose(1, 2)
    return du, d_at, d_mix


def _recompute(
    u_hat: torch.Tensor, spectra: torch.Tensor, at: torch.Tensor, plan: MixPlan
) -> torch.Tensor:
    """The chunk's convolutions (B, c, D, L) again, for backward under checkpointing."""
    conv = at.new_empty(u_hat.shape[0], spectra.shape[0], u_hat.shape[2], at.shape[-1])
    _convolve_chunk(u_hat, spectra, at, plan, conv, None)
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


class ESSSMLayer(nn.Module):
    """ES-SSM sequence mixer (docs/design.md section 1), input and output (B, L, D).

    y(t) = sum_{j <= k} alpha_j(t) sigma_j^(1/4) M_j (phi_j * u)(t) + D_skip u(t), where alpha is a
    softmax over the active prefix of RMS-rescaled gate logits. Only channels 1..k are computed,
    so time, memory and gradients of a pass at budget k touch nothing beyond channel k.

    The mixing matrices are stored transposed, `mix[j] = M_j^T` of shape (D_in, D_out), so the
    active prefix `mix[:k]` reshapes to one (k*D, D) GEMM operand without a copy.

    Performance (docs/benchmarks.md): one input FFT per pass; the k*D convolutions run in
    cache-sized blocks, weighted, and feed one GEMM per chunk of `channel_chunk` channels
    (None: sized to a 16 MiB working set on CPU, 1 GiB on GPU); training stores only the
    convolutions (B, k, D, L), or nothing with `checkpoint=True` (recomputed in backward).
    """

    def __init__(
        self,
        d_model: int,
        seq_len: int,
        k_max: int = 32,
        gate: bool = True,
        rms_rescale: bool = True,
        normalize: bool = True,
        gate_bias_init: float = -2.0,
        mix_init_std: float = 1e-3,
        channel_chunk: int | None = None,
        eps: float = 1e-6,
        filter_cache_dir: str | None = None,
        checkpoint: bool = False,
        init_filters: bool = True,
    ) -> None:
        """normalize=False (needs gate=False) gives every channel the weight 1, the plain
        spectral-SSM sum of STU: truncating it drops terms with nothing renormalised, as in the
        fixed-budget baseline. init_filters=False skips the eigendecomposition and leaves
        `sigma`/`phi` NaN, for a layer whose filters come from a state dict (a checkpoint or an
        exported, truncated model, whose top-k filters of (L, K) need not match a fresh (L, k)
        computation)."""
        super().__init__()
        if d_model < 2:
            raise ValueError(f"d_model must be >= 2, got {d_model}")
        if gate and not normalize:
            raise ValueError(
                "normalize=False (unit channel weights) needs gate=False: the gate is a softmax "
                "over the active prefix, which is normalised by construction"
            )
        self.d_model, self.seq_len, self.k_max = d_model, seq_len, k_max
        self.gate, self.rms_rescale, self.normalize, self.eps = gate, rms_rescale, normalize, eps
        self.channel_chunk, self.checkpoint = channel_chunk, checkpoint
        # Persistent: a trained model never depends on recomputing the near-null-space filters.
        self.register_buffer("sigma", torch.full((k_max,), math.nan))
        self.register_buffer("phi", torch.full((seq_len, k_max), math.nan))
        if init_filters:
            sigma, phi = spectral_filters(seq_len, k_max, cache_dir=filter_cache_dir)
            self.sigma.copy_(torch.from_numpy(sigma))
            self.phi.copy_(torch.from_numpy(phi))
        # Without the gate (the fixed-budget ablation) no gate parameters exist: unused ones
        # would inflate parameter counts and break DDP's gradient bucketing.
        self.gate_in = nn.Linear(d_model, d_model // 2) if gate else None
        self.gate_out = nn.Linear(d_model // 2, k_max) if gate else None
        if gate:
            nn.init.constant_(self.gate_out.bias, gate_bias_init)
        self.mix = nn.Parameter(torch.randn(k_max, d_model, d_model) * mix_init_std)
        self.skip = nn.Linear(d_model, d_model, bias=False)
        self._spectra: dict[tuple, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, seq_len={self.seq_len}, k_max={self.k_max}, "
            f"gate={self.gate}, rms_rescale={self.rms_rescale}, normalize={self.normalize}"
        )

    def channel_weights(self, u: torch.Tensor, k: int) -> torch.Tensor:
        """alpha (B, L, k): masked-softmax gate over the active prefix; rows sum to 1 at any k
        (without the gate: 1/k each, or 1 each when not normalised)."""
        if not self.gate:
            return u.new_full((*u.shape[:2], k), 1.0 / k if self.normalize else 1.0)
        hidden = F.gelu(linear(u, self.gate_in.weight, self.gate_in.bias))
        logits = linear(hidden, self.gate_out.weight[:k], self.gate_out.bias[:k])
        if self.rms_rescale:
            norm = logits.norm(dim=-1, keepdim=True).clamp_min(self.eps)
            logits = logits * (math.sqrt(k) / norm)
        return logits.softmax(dim=-1)

    def mixing_weights(self, u: torch.Tensor, k: int) -> torch.Tensor:
        """alpha_j(t) sigma_j^(1/4), (B, L, k): the weight of channel j's term at time t (one
        definition for the layer and for incremental generation, esssm/generate.py)."""
        return self.channel_weights(u, k) * filter_scale(self.sigma[:k])

    def spectra(self, length: int, dtype: torch.dtype) -> tuple[torch.Tensor, int]:
        """Spectra (k_max, F) of the filters cut to `length` taps, and their FFT size.

        Cut, because taps beyond the input length would wrap around into the kept outputs.
        Cached per (length, dtype) until the filters change (device move, load_state_dict).
        """
        nfft = fast_fft_size(2 * length - 1)
        key = (length, dtype, self.phi.device, self.phi.data_ptr(), self.phi._version)
        spectra = self._spectra.get(key)
        if spectra is None:
            self._spectra = {k: v for k, v in self._spectra.items() if k[2:] == key[2:]}
            spectra = filter_spectra(self.phi[:length].to(dtype), nfft)
            self._spectra[key] = spectra
        return spectra, nfft

    def forward(
        self, u: torch.Tensor, budget: int | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """u (B, L, D) -> (B, L, D) at budget k. `mask` is unused: the layer is causal, so the
        right-padding that follows a sequence never reaches its valid positions."""
        k = check_budget(budget, self.k_max)
        self._check_input(u)
        spectra, nfft = self.spectra(u.shape[1], fft_dtype(u.dtype))
        weights = self.mixing_weights(u, k)
        plan = self._plan(u, k, nfft)
        return linear(u, self.skip.weight) + spectral_mixing(u, weights, self.mix[:k], spectra[:k], plan)

    def _plan(self, u: torch.Tensor, k: int, nfft: int) -> MixPlan:
        gemm_dtype = u.dtype
        if torch.is_autocast_enabled(u.device.type) and u.dtype != torch.float64:
            gemm_dtype = torch.get_autocast_dtype(u.device.type)
        return MixPlan.for_input(
            u.shape, k, nfft, gemm_dtype, self.channel_chunk, self.checkpoint, u.device.type
        )

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
        gate_row = self.gate_out.in_features + 1 if self.gate else 0
        per_channel = self.d_model * self.d_model + gate_row
        return (self.k_max - k) * per_channel
