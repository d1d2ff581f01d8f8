"""CPU GEMM helpers: F.linear, A @ B^T and batched products through oneDNN on CPU float32.

oneDNN's AVX-512 kernels run the mixing GEMMs about 2.2x faster than MKL's sgemm on AMD CPUs,
where MKL falls back to its AVX2 path (docs/benchmarks.md). The op behind them,
`torch.ops.mkldnn._linear_pointwise`, is private, so its use is one explicit switch:

    from esssm.ops import gemm
    gemm.set_onednn(False)       # plain torch matmuls from now on
    with gemm.onednn(False): ... # for a block only

It starts on where the op exists, and turns itself off for the rest of the process (with a
warning) should the op ever fail. Every other case (GPUs, other dtypes, autocast, tracing)
always uses the plain torch ops; the results agree to float32 round-off. Under torch.compile and
torch.export the plain ops are what gets traced: the compiler picks its own GEMMs, and the private
op's weight-prepacking lowering would reject the layers' non-constant weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F


def onednn_available() -> bool:
    """Whether this torch build has the oneDNN linear op."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_use_onednn = onednn_available()


def set_onednn(enabled: bool) -> None:
    """Route CPU float32 GEMMs through oneDNN (True, where available) or plain torch (False)."""
    global _use_onednn
    _use_onednn = bool(enabled) and onednn_available()


def onednn_enabled() -> bool:
    return _use_onednn


@contextmanager
def onednn(enabled: bool) -> Iterator[None]:
    """`set_onednn(enabled)` inside the block, the previous setting after it."""
    previous = _use_onednn
    set_onednn(enabled)
    try:
        yield
    finally:
        set_onednn(previous)


def _onednn_for(*tensors: torch.Tensor) -> bool:
    """The switch is on, the operands are CPU float32, and no tracer is recording (torch.jit.trace
    cannot record the custom autograd function around the private op; torch.compile and
    torch.export get the plain ops)."""
    cpu32 = all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
    return _use_onednn and cpu32 and not tracing


def matmul_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a (m, k) @ b (n, k)^T -> (m, n); operands may be strided views."""
    if _onednn_for(a, b):
        try:
            return torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
        except (RuntimeError, AttributeError, TypeError) as error:
            warnings.warn(f"oneDNN linear failed ({error}); using plain torch matmuls from now on")
            set_onednn(False)
    return a @ b.mT


class _Linear(torch.autograd.Function):
    """F.linear with its three products through `matmul_nt`."""

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
    """F.linear, x (..., in) -> (..., out), with the same gradients; oneDNN on CPU float32
    outside autocast."""
    if torch.is_autocast_enabled(x.device.type) or not _onednn_for(x, weight):
        return F.linear(x, weight, bias)
    return _Linear.apply(x, weight, bias)


def batched_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b -> (B, m, n) for a (B, m, k) or (m, k) and b (B, k, n) or (k, n), one of them batched.

    Transposed operands stay views: with oneDNN, one GEMM per sample (CPU batches are small),
    otherwise one bmm.
    """
    batch = (a if a.dim() == 3 else b).shape[0]
    a3 = a if a.dim() == 3 else a.expand(batch, -1, -1)
    b3 = b if b.dim() == 3 else b.expand(batch, -1, -1)
    if not _onednn_for(a, b):
        return torch.bmm(a3, b3)
    outs = [matmul_nt(a3[i], b3[i].mT) for i in range(batch)]
    return outs[0].unsqueeze(0) if batch == 1 else torch.stack(outs)
