"""The spectral-mixing kernel (esssm.ops.mixing) against its plain reference
(esssm.ops.reference, the layer with fast=False): outputs and gradients agree."""

from dataclasses import replace

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
    fast = layer.settings
    layer.settings = replace(fast, fast=False)
    try:
        return layer(u, budget=budget)
    finally:
        layer.settings = fast


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


@pytest.mark.parametrize(
    "signals, channels",
    [(5, 2),  # blocks cut inside one channel's 16 features
     (32, 3),  # blocks of 2 whole channels of one sample, a 1-channel block at each chunk's end
     (64, 2)],  # blocks of whole samples (the default at this size)
)
@pytest.mark.parametrize("checkpoint", [False, True])
def test_every_fft_block_shape_gives_the_same_result(monkeypatch, signals, channels, checkpoint):
    """Each way `signal_blocks` cuts the work (features, channels, samples), forward and both
    backward paths (stored and recomputed convolutions), agrees with the reference."""
    layer = make_layer(checkpoint=checkpoint)
    u = torch.randn(2, 64, 16, requires_grad=True)
    expected = naive_forward(layer, u, 5)
    slow_grads = torch.autograd.grad(expected.square().sum(), [u, *layer.parameters()], allow_unused=True)
    nfft, batch, d, length = 128, 2, 16, 64
    monkeypatch.setattr(mixing, "_CPU_BLOCK_BYTES", 8 * nfft * signals)
    monkeypatch.setattr(mixing, "_CPU_CHUNK_BYTES", 4 * batch * d * length * channels)
    out = layer(u, budget=5)
    assert torch.allclose(out, expected, atol=1e-5)
    fast_grads = torch.autograd.grad(out.square().sum(), [u, *layer.parameters()], allow_unused=True)
    for fast, slow in zip(fast_grads, slow_grads):
        assert (fast is None) == (slow is None)
        if fast is not None:
            assert torch.allclose(fast, slow, atol=1e-4, rtol=1e-4)


def test_signal_blocks_cover_every_signal_once():
    for rows in (1, 5, 16, 20, 32, 48, 64, 1000):
        seen = torch.zeros(2, 3, 16, dtype=torch.int64)
        for b, c, f in mixing.signal_blocks(2, 3, 16, rows):
            assert seen[b, c, f].numel() <= max(rows, 1)
            seen[b, c, f] += 1
        assert bool((seen == 1).all()), rows


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
    slow = ESSSM(16, 2, 32, 4, layer={"fast": False}).eval()
    slow.load_state_dict(fast.state_dict())
    assert all(not m.settings.fast for m in slow.modules() if isinstance(m, ESSSMLayer))
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
