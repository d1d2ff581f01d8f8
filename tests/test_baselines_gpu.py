"""Baselines on a CUDA device: same outputs as on the CPU, and bf16 autocast training steps.
Skipped where no GPU is present (CI)."""

from __future__ import annotations

import pytest
import torch

from baselines.scan import selective_scan, selective_scan_ref
from test_baselines import BUILDERS, D, build, inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("name", BUILDERS)
def test_cuda_matches_cpu(name: str) -> None:
    model, x = build(name), inputs()
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    mask[1, 20:] = False
    with torch.no_grad():
        expected = model(x, mask=mask)
        got = model.cuda()(x.cuda(), mask=mask.cuda())
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", BUILDERS)
def test_bf16_autocast_training_step(name: str) -> None:
    model = build(name).train().cuda()
    x = torch.randn(4, 30, D, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = model(x)
    y.float().square().mean().backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_selective_scan_cuda_matches_reference() -> None:
    g = torch.Generator().manual_seed(0)
    u, B, C = (torch.randn(2, 300, n, generator=g).cuda() for n in (8, 16, 16))
    dt = torch.rand(2, 300, 8, generator=g).cuda() * 0.2
    A = -torch.rand(8, 16, generator=g).cuda() - 0.1
    args = [t.requires_grad_() for t in (u, dt, A, B, C)]
    y, y_ref = selective_scan(*args, channel_chunk=3), selective_scan_ref(*args)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(y.sum(), args)
    grads_ref = torch.autograd.grad(y_ref.sum(), args)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
