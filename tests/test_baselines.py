"""Baselines: shapes and gradients, causality, padding, scans against sequential references."""

from __future__ import annotations

import math

import pytest
import torch

from baselines import ARSTU, FixedSpectralSSM, Mamba, Mamba2, S4D, Transformer, match_width
from baselines.common import depthwise_fft_conv
from baselines.mamba2 import ssd, ssd_ref
from baselines.s4d import S4DMixer, vandermonde_kernel_ref
from baselines.scan import linear_scan, linear_scan_ref, selective_scan, selective_scan_ref
from baselines.sizing import count_at_width, relative_gap
from baselines.stu import ARSTUMixer
from esssm.model import ESSSM, count_parameters

D, LAYERS, SEQ = 16, 2, 32

BUILDERS = {
    "transformer": lambda: Transformer(D, LAYERS, n_heads=2, max_len=SEQ),
    "transformer_causal": lambda: Transformer(D, LAYERS, n_heads=2, max_len=SEQ, causal=True),
    "transformer_learned": lambda: Transformer(D, LAYERS, n_heads=2, max_len=SEQ, positions="learned"),
    "mamba": lambda: Mamba(D, LAYERS, d_state=4),
    "mamba2": lambda: Mamba2(D, LAYERS, d_state=8, headdim=8, chunk_size=8),
    "s4d": lambda: S4D(D, LAYERS, d_state=8),
    "s4d_inv_bidirectional": lambda: S4D(D, LAYERS, d_state=8, init="inv", bidirectional=True),
    "arstu": lambda: ARSTU(D, LAYERS, seq_len=SEQ, num_filters=4),
    "fixed_spectral": lambda: FixedSpectralSSM(d_model=D, n_layers=LAYERS, seq_len=SEQ, k_max=6),
}
CAUSAL = ["transformer_causal", "mamba", "mamba2", "s4d", "arstu", "fixed_spectral"]
NON_CAUSAL = ["transformer", "transformer_learned", "s4d_inv_bidirectional"]


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return BUILDERS[name]().eval()


def inputs(batch: int = 2, length: int = SEQ - 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, length, D, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", BUILDERS)
def test_forward_backward(name: str) -> None:
    model = build(name).train()
    x = inputs().requires_grad_()
    mask = torch.ones(x.shape[:2], dtype=torch.bool)
    mask[1, 20:] = False
    y = model(x, mask=mask)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"  # DDP needs every parameter used
        assert torch.isfinite(p.grad).all(), pname


def _perturb_future(model: torch.nn.Module, t0: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = inputs()
    x2 = x.clone()
    x2[:, t0] += 3.0 * torch.randn(D)  # not a constant shift: LayerNorm would erase that
    with torch.no_grad():
        return model(x), model(x2)


@pytest.mark.parametrize("name", CAUSAL)
def test_causal(name: str) -> None:
    t0 = 17
    y, y2 = _perturb_future(build(name), t0)
    torch.testing.assert_close(y2[:, :t0], y[:, :t0], atol=1e-5, rtol=1e-5)
    assert (y2[:, t0:] - y[:, t0:]).abs().max() > 1e-3


@pytest.mark.parametrize("name", NON_CAUSAL)
def test_bidirectional_sees_the_future(name: str) -> None:
    y, y2 = _perturb_future(build(name), 17)
    assert (y2[:, :17] - y[:, :17]).abs().max() > 1e-4


@pytest.mark.parametrize("name", BUILDERS)
def test_right_padding_leaves_valid_outputs_unchanged(name: str) -> None:
    model, valid = build(name), 19
    x = inputs()
    x[1, valid:] = 100.0 * torch.randn(x.shape[1] - valid, D)  # garbage in the padding
    mask = torch.arange(x.shape[1]) < torch.tensor([[x.shape[1]], [valid]])
    with torch.no_grad():
        padded = model(x, mask=mask)
        alone = model(x[1:, :valid])
    torch.testing.assert_close(padded[1, :valid], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in BUILDERS if n != "fixed_spectral"])
def test_budget_accepted_and_ignored(name: str) -> None:
    model = build(name)
    assert model.k_max is None and model.d_model == D
    x = inputs()
    with torch.no_grad():
        torch.testing.assert_close(model(x, budget=2), model(x))


def test_fixed_spectral_ssm_honours_budget() -> None:
    model, k = build("fixed_spectral"), 3
    assert model.k_max == 6
    settings = [b.mixer.settings for b in model.blocks]
    assert all(not s.gate and not s.rms_rescale and not s.normalize for s in settings)
    x = inputs()
    y = model(x, budget=k)
    y.sum().backward()
    for block in model.blocks:
        assert block.mixer.mix.grad[k:].abs().max() == 0
    with torch.no_grad():
        for block in model.blocks:
            block.mixer.mix[k:].normal_()  # channels beyond k must not matter
        torch.testing.assert_close(model(x, budget=k), y)
        assert (model(x) - y).abs().max() > 1e-4
    with pytest.raises(ValueError):
        model(x, budget=7)


def fixed(**kw) -> FixedSpectralSSM:
    torch.manual_seed(0)
    return FixedSpectralSSM(d_model=D, n_layers=LAYERS, seq_len=SEQ, k_max=6, dropout=0.0, drop_path=0.0, **kw)


@pytest.mark.parametrize("switch", [{"fast": False}, {"checkpoint": True}, {"channel_chunk": 2}])
def test_fixed_spectral_ssm_takes_every_layer_switch_of_esssm(switch):
    """Only the layer defaults differ: a switch changes how it computes, never what it computes."""
    model, plain = fixed(layer=switch), fixed()
    assert all(getattr(b.mixer.settings, k) == v for b in model.blocks for k, v in switch.items())
    assert not model.blocks[0].mixer.settings.gate  # the fixed defaults stay under an override
    x = inputs().requires_grad_()
    torch.testing.assert_close(model(x, budget=3), plain(x, budget=3), rtol=1e-4, atol=1e-5)
    grad, = torch.autograd.grad(model(x, budget=3).sum(), x)
    plain_grad, = torch.autograd.grad(plain(x, budget=3).sum(), x)
    torch.testing.assert_close(grad, plain_grad, rtol=1e-4, atol=1e-5)


def test_layer_settings_parse_as_a_nested_config_over_the_class_defaults():
    """`--model.backbone.init_args.layer.fast false` on the fixed config keeps its other defaults."""
    from dataclasses import replace

    from jsonargparse import ArgumentParser

    from baselines.stu import FIXED_LAYER

    parser = ArgumentParser()
    parser.add_subclass_arguments(torch.nn.Module, "backbone")
    spec = {"class_path": "baselines.FixedSpectralSSM",
            "init_args": {"d_model": D, "n_layers": 1, "seq_len": SEQ, "k_max": 4, "layer": {"fast": False}}}
    built = parser.instantiate(parser.parse_object({"backbone": spec})).backbone
    assert built.blocks[0].mixer.settings == replace(FIXED_LAYER, fast=False)
    with pytest.raises(ValueError, match=r"layer has no setting \['gates'\]"):
        fixed(layer={"gates": False})


@pytest.mark.parametrize("name", ["fixed_spectral", "arstu"])
def test_spectral_backbones_round_trip_through_a_weights_only_file(name, tmp_path):
    """module_spec stores the layer settings as a plain dict; build_module rebuilds the same model."""
    from esssm.model import build_module, module_spec

    model = build(name).eval()
    path = tmp_path / "spec.pt"
    torch.save({"spec": module_spec(model), "state": model.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    assert isinstance(saved["spec"]["init_args"]["layer"], dict)
    rebuilt = build_module(saved["spec"])
    rebuilt.load_state_dict(saved["state"])
    assert module_spec(rebuilt) == saved["spec"]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(inputs()), model(inputs()))


# ------------------------------------------------------------------------ scans vs references


@pytest.mark.parametrize("length", [1, 2, 5, 64, 100])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_linear_scan_matches_sequential(length: int, dtype: torch.dtype, tol: float) -> None:
    g = torch.Generator().manual_seed(length)
    a = torch.rand(2, length, 3, 4, generator=g, dtype=dtype)
    b = torch.randn(2, length, 3, 4, generator=g, dtype=dtype)
    expected = linear_scan_ref(a, b)
    torch.testing.assert_close(linear_scan(a.clone(), b.clone()), expected, atol=tol, rtol=tol)


def _selective_inputs(dtype: torch.dtype, length: int = 45) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch, channels, state = 2, 6, 4
    u = torch.randn(batch, length, channels, generator=g, dtype=dtype)
    dt = torch.rand(batch, length, channels, generator=g, dtype=dtype) * 0.5
    A = -torch.rand(channels, state, generator=g, dtype=dtype) - 0.1
    B = torch.randn(batch, length, state, generator=g, dtype=dtype)
    C = torch.randn(batch, length, state, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (u, dt, A, B, C)]


@pytest.mark.parametrize("chunk", [None, 4])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_selective_scan_matches_sequential(chunk: int | None, dtype: torch.dtype, tol: float) -> None:
    args = _selective_inputs(dtype)
    y, y_ref = selective_scan(*args, channel_chunk=chunk), selective_scan_ref(*args)
    torch.testing.assert_close(y, y_ref, atol=tol, rtol=tol)
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y, args, grad_out)
    grads_ref = torch.autograd.grad(y_ref, args, grad_out)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, atol=10 * tol, rtol=10 * tol)


@pytest.mark.parametrize("length,chunk", [(37, 8), (64, 16), (5, 8)])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_ssd_matches_recurrence(length: int, chunk: int, dtype: torch.dtype, tol: float) -> None:
    g = torch.Generator().manual_seed(length)
    x = torch.randn(2, length, 3, 4, generator=g, dtype=dtype)
    log_a = -torch.rand(2, length, 3, generator=g, dtype=dtype)
    B = torch.randn(2, length, 5, generator=g, dtype=dtype)
    C = torch.randn(2, length, 5, generator=g, dtype=dtype)
    torch.testing.assert_close(ssd(x, log_a, B, C, chunk), ssd_ref(x, log_a, B, C), atol=tol, rtol=tol)


def test_s4d_kernel_convolution_matches_recurrence() -> None:
    torch.manual_seed(0)
    mixer, length = S4DMixer(D, d_state=8, init="inv"), 40
    u = inputs(length=length)
    with torch.no_grad():
        conv = depthwise_fft_conv(u, mixer.kernel(length))
        dt_a, cb = mixer.discretise()  # (D, N/2)
        a = torch.exp(dt_a).expand(2, length, *dt_a.shape)
        states = linear_scan_ref(a, u.unsqueeze(-1).to(a.dtype).expand_as(a))
        recurrence = 2 * torch.einsum("blhn,hn->blh", states, cb).real
    torch.testing.assert_close(conv, recurrence, atol=1e-5, rtol=1e-5)


def direct_vandermonde(mixer: S4DMixer, length: int) -> torch.Tensor:
    return vandermonde_kernel_ref(*mixer.discretise(), length)


@pytest.mark.parametrize("length", [1, 2, 7, 40, 1000])
def test_s4d_factored_kernel_matches_direct_vandermonde_in_float64(length: int) -> None:
    torch.manual_seed(length)
    mixer = S4DMixer(D, d_state=16, init="inv").double()
    mixer.log_dt.data.uniform_(math.log(1e-3), math.log(0.5))
    kernel, reference = mixer.kernel(length), direct_vandermonde(mixer, length)
    torch.testing.assert_close(kernel, reference, atol=1e-12, rtol=1e-12)
    grad_out = torch.randn_like(kernel)
    params = [mixer.log_dt, mixer.C, mixer.log_A_real, mixer.A_imag]
    for got, want in zip(torch.autograd.grad(kernel, params, grad_out),
                         torch.autograd.grad(reference, params, grad_out)):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_s4d_float32_kernel_at_speech_length_is_as_accurate_as_direct() -> None:
    """At L = 16000 the factored float32 kernel is no further from float64 than the direct one."""
    torch.manual_seed(0)
    mixer, length = S4DMixer(D, d_state=64), 16000
    truth = direct_vandermonde(mixer.double(), length)
    mixer.float()
    with torch.no_grad():
        factored_error = (mixer.kernel(length).double() - truth).abs().max()
        direct_error = (direct_vandermonde(mixer, length).double() - truth).abs().max()
    assert factored_error <= 2 * direct_error + 1e-6, (factored_error, direct_error)


def test_s4d_bidirectional_kernel_matches_dense_convolution() -> None:
    torch.manual_seed(0)
    mixer, length = S4DMixer(D, d_state=8, bidirectional=True), 12
    u = inputs(length=length)
    with torch.no_grad():
        forward, backward = mixer.kernel(length).chunk(2)
        lag = torch.arange(length)[:, None] - torch.arange(length)[None, :]  # t - s
        past = forward[:, lag.clamp(min=0)] * (lag >= 0)  # (D, t, s)
        future = backward[:, (-lag - 1).clamp(min=0)] * (lag < 0)
        dense = torch.einsum("dts,bsd->btd", past + future, u) + u * mixer.D
        y = mixer(u)
    expected = torch.nn.functional.glu(mixer.output(torch.nn.functional.gelu(dense)), dim=-1)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------ AR-STU


def test_arstu_filter_bank_has_both_branches() -> None:
    mixer = ARSTUMixer(D, SEQ, num_filters=4)
    plus, minus = mixer.filters.chunk(2, dim=1)
    signs = torch.tensor([(-1.0) ** t for t in range(SEQ)]).unsqueeze(-1)
    torch.testing.assert_close(minus, plus * signs)
    assert mixer.filters.shape == (SEQ, 8) and "filters" in mixer.state_dict()


def test_arstu_output_autoregression_is_the_order_two_recurrence() -> None:
    torch.manual_seed(0)
    mixer, x = ARSTUMixer(D, SEQ, num_filters=4), inputs()
    with torch.no_grad():
        delta = mixer(x)  # ar_output = 0 at init: no output feedback
        mixer.ar_output.uniform_(-1.5, 1.5)
        y = mixer(x)
    r1, r2 = torch.tanh(mixer.ar_output.detach())
    prev = torch.nn.functional.pad(y, (0, 0, 1, 0))[:, :-1]
    prev2 = torch.nn.functional.pad(y, (0, 0, 2, 0))[:, :-2]
    torch.testing.assert_close(y - (r1 + r2) * prev + r1 * r2 * prev2, delta, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------ Transformer


def test_transformer_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_heads"):
        Transformer(10, 1, n_heads=4)
    with pytest.raises(ValueError, match="positions"):
        Transformer(16, 1, positions="rotary")
    with pytest.raises(ValueError, match="max_len"):
        Transformer(16, 1, n_heads=2, max_len=8)(torch.randn(1, 9, 16))


def test_transformer_learned_positions_are_parameters() -> None:
    names = {n for n, _ in build("transformer_learned").named_parameters()}
    assert "positions" in names
    assert "positions" not in {n for n, _ in build("transformer").named_parameters()}


def test_mamba2_rejects_indivisible_heads() -> None:
    with pytest.raises(ValueError, match="headdim"):
        Mamba2(12, 1, headdim=16)


# ------------------------------------------------------------------------ sizing


def test_match_width_finds_the_closest_multiple() -> None:
    def toy(width: int) -> torch.nn.Module:  # 3 w^2 + 5 w + 7 parameters
        return torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(3 * width * width + 5 * width + 7))])

    for target in (1_000, 123_456, 5_000_000):
        width = match_width(toy, target, multiple=8, max_width=4096)
        best = min(range(8, 4097, 8), key=lambda w: abs(3 * w * w + 5 * w + 7 - target))
        assert width == best


def test_match_width_sizes_a_baseline_to_esssm() -> None:
    target = count_parameters(ESSSM(64, 2, seq_len=SEQ, k_max=8))

    def mamba(width: int) -> torch.nn.Module:
        return Mamba(width, 2)

    width = match_width(mamba, target)
    assert width % 8 == 0
    assert relative_gap(count_at_width(mamba, width), target) < 0.1
    neighbours = [count_at_width(mamba, w) for w in (width - 8, width + 8)]
    assert all(abs(n - target) >= abs(count_at_width(mamba, width) - target) for n in neighbours)
    assert math.isclose(relative_gap(110, 100), 0.1)
