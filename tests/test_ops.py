"""The spectral-mixing kernel (esssm.ops.mixing) against its plain reference
(esssm.ops.reference, the layer with fast=False): outputs and gradients agree."""

import pytest
import torch

from esssm.layer import ESSSMLayer
from esssm.ops import gemm, mixing
from esssm.ops.gemm import linear
from test_layer import make_layer as make_small_layer


def make_layer(**kw) -> ESSSMLayer:
    """A layer (D=16, L=64, k_max=8) with a non-trivial gate."""
    return make_small_layer(16, 64, 8, **kw)


def naive_forward(layer: ESSSMLayer, u: torch.Tensor, budget: int) -> torch.Tensor:
    """The layer's output, same parameters, through the reference mixing (fast=False)."""
    layer.fast = False
    try:
        return layer(u, budget=budget)
    finally:
        layer.fast = True


@pytest.mark.parametrize("k", [1, 3, 8])
@pytest.mark.parametrize(
    "options",
    [{}, {"channel_chunk": 3}, {"checkpoint": True}, {"gate": False}, {"gate": False, "normalize": False},
     {"rms_rescale": False}],
)
def test_fast_layer_matches_naive(k, options):
    layer = make_layer(**options)
    u = torch.randn(3, 64, 16, requires_grad=True)
    fast = layer(u, budget=k)
    fast.square().sum().backward()
    fast_grads = [u.grad.clone()] + [p.grad.clone() for p in layer.parameters()]
    u.grad = None
    layer.zero_grad()
    slow = naive_forward(layer, u, budget=k)
    slow.square().sum().backward()
    slow_grads = [u.grad] + [p.grad for p in layer.parameters()]
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast_grads, slow_grads):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)


def test_inference_matches_naive_at_every_budget_and_length():
    layer = make_layer()
    with torch.no_grad():
        for length in (1, 17, 64):
            u = torch.randn(2, length, 16)
            for k in range(1, 9):
                assert torch.allclose(layer(u, budget=k), naive_forward(layer, u, k), atol=1e-5)


def test_small_fft_blocks_give_the_same_result(monkeypatch):
    """Blocks cut inside one channel's features (the CPU cache path) change nothing."""
    layer = make_layer()
    u = torch.randn(2, 64, 16, requires_grad=True)
    expected = naive_forward(layer, u, 5)
    monkeypatch.setattr(mixing, "_CPU_BLOCK_BYTES", 8 * 128 * 5)  # 5 signals per block
    monkeypatch.setattr(mixing, "_CPU_CHUNK_BYTES", 4 * 2 * 16 * 64 * 2)  # 2 channels
    out = layer(u, budget=5)
    assert torch.allclose(out, expected, atol=1e-5)
    (grad_fast,) = torch.autograd.grad(out.sum(), u)
    (grad_slow,) = torch.autograd.grad(expected.sum(), u)
    assert torch.allclose(grad_fast, grad_slow, atol=1e-4)


def test_bf16_autocast_keeps_ffts_in_float32_and_stays_close():
    layer = make_layer()
    u = torch.randn(2, 64, 16, requires_grad=True)
    expected = naive_forward(layer, u, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(u, budget=6)
    assert torch.allclose(out.float(), expected, atol=5e-2, rtol=5e-2)
    (grad,) = torch.autograd.grad(out.float().square().sum(), u)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("checkpoint", [False, True])
def test_cuda_layer_matches_naive(checkpoint):
    layer = make_layer(checkpoint=checkpoint).cuda()
    u = torch.randn(3, 64, 16, device="cuda", requires_grad=True)
    fast = layer(u, budget=5)
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), u)
    slow = naive_forward(layer, u, 5)
    (grad_slow,) = torch.autograd.grad(slow.square().sum(), u)
    assert torch.allclose(fast, slow, atol=1e-5, rtol=1e-5)
    assert torch.allclose(grad_fast, grad_slow, atol=1e-4, rtol=1e-4)


def test_plain_matmul_path_matches_naive():
    """The bmm path (GPUs, dtypes oneDNN does not take, a torch without the op) agrees too."""
    layer = make_layer()
    u = torch.randn(2, 64, 16, requires_grad=True)
    with gemm.onednn(False):
        assert not gemm.onednn_enabled()
        out, expected = layer(u, budget=4), naive_forward(layer, u, 4)
        assert torch.allclose(out, expected, atol=1e-5)
        (grad_fast,) = torch.autograd.grad(out.square().sum(), u)
        (grad_slow,) = torch.autograd.grad(expected.square().sum(), u)
        assert torch.allclose(grad_fast, grad_slow, atol=1e-4)
    assert gemm.onednn_enabled() == gemm.onednn_available()


def test_linear_matches_torch_linear_with_gradients():
    x = torch.randn(3, 7, 12, requires_grad=True)
    weight = torch.randn(5, 12, requires_grad=True)
    bias = torch.randn(5, requires_grad=True)
    ours = linear(x, weight, bias)
    grads = torch.autograd.grad(ours.square().sum(), (x, weight, bias))
    ref = torch.nn.functional.linear(x, weight, bias)
    ref_grads = torch.autograd.grad(ref.square().sum(), (x, weight, bias))
    assert torch.allclose(ours, ref, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-4)


def test_fast_flag_is_a_backbone_setting_and_changes_nothing():
    from esssm.model import ESSSM

    torch.manual_seed(0)
    fast = ESSSM(16, 2, 32, 4).eval()
    slow = ESSSM(16, 2, 32, 4, fast=False).eval()
    slow.load_state_dict(fast.state_dict())
    assert all(not m.fast for m in slow.modules() if isinstance(m, ESSSMLayer))
    x = torch.randn(2, 32, 16)
    with torch.no_grad():
        for k in (1, 4):
            assert torch.allclose(slow(x, budget=k), fast(x, budget=k), atol=1e-5)


def test_spectra_cache_follows_device_and_dtype_moves():
    layer = make_layer()
    u = torch.randn(1, 64, 16)
    out = layer(u)
    double = layer.double()(u.double())  # new phi tensor: new cache entry, float64 spectra
    assert double.dtype == torch.float64 and torch.allclose(double.float(), out, atol=1e-5)
