"""ESSSMLayer against a float64 re-computation of the formula in docs/design.md (section 1); truncation invariance."""

import math

import pytest
import torch

from esssm.layer import ESSSMLayer, ESSSMSettings
from esssm.spectral import SIGMA_FLOOR


def reference_layer(layer: ESSSMLayer, u: torch.Tensor, k: int) -> torch.Tensor:
    """The formula of docs/design.md section 1 written out directly in float64, channel by channel."""
    u = u.double()
    p = {name: t.detach().double() for name, t in layer.named_parameters()}
    sigma, phi, settings = layer.sigma.double(), layer.phi.double(), layer.settings
    batch, length, d = u.shape
    if settings.gate:
        hidden = torch.nn.functional.gelu(u @ p["gate_in.weight"].T + p["gate_in.bias"])
        s = (hidden @ p["gate_out.weight"].T + p["gate_out.bias"])[..., :k]
        if settings.rms_rescale:
            s = s * math.sqrt(k) / s.norm(dim=-1, keepdim=True).clamp_min(settings.eps)
        alpha = torch.softmax(s, dim=-1)
    else:
        alpha = torch.full((batch, length, k), 1.0 / k if settings.normalize else 1.0, dtype=torch.float64)
    if settings.weight_sum == "k":
        alpha = alpha * k
    t = torch.arange(length)
    lag = t[:, None] - t[None, :]
    y = u @ p["skip.weight"].T
    for j in range(k):
        toeplitz = torch.where(lag >= 0, phi[lag.clamp_min(0), j], torch.zeros(()).double())
        conv = torch.einsum("ts,bsd->btd", toeplitz, u)  # (phi_j * u)(t), causal
        m_j = p["mix"][j].T  # M_j, applied as M_j U_j(t)
        y = y + alpha[..., j : j + 1] * max(sigma[j], SIGMA_FLOOR) ** 0.25 * (conv @ m_j.T)
    return y


def make_layer(d=8, seq_len=32, k_max=6, **kw) -> ESSSMLayer:
    torch.manual_seed(0)
    layer = ESSSMLayer(d, seq_len, k_max, ESSSMSettings(mix_init_std=0.3, **kw))
    if layer.settings.gate:
        with torch.no_grad():  # non-trivial gate so the softmax weights differ per channel
            layer.gate_out.weight.normal_(0, 1.0)
            layer.gate_out.bias.normal_(0, 1.0)
    return layer


@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize(
    "options",
    [{}, {"gate": False}, {"gate": False, "normalize": False}, {"rms_rescale": False}, {"channel_chunk": 4},
     {"weight_sum": "k"}],
)
def test_layer_matches_float64_formula(k, options):
    layer = make_layer(**options)
    u = torch.randn(2, 32, 8)
    expected = reference_layer(layer, u, k)
    out32 = layer(u, budget=k)
    assert out32.dtype == torch.float32
    assert torch.allclose(out32.double(), expected, atol=1e-5, rtol=1e-5)
    out64 = layer.double()(u.double(), budget=k)
    assert torch.allclose(out64, expected, atol=1e-12, rtol=1e-10)


def test_default_budget_is_k_max_and_short_inputs_work():
    layer = make_layer()
    u = torch.randn(1, 20, 8)  # shorter than seq_len: filters truncated, causality keeps it exact
    assert torch.equal(layer(u), layer(u, budget=6))
    assert torch.allclose(layer(u).double(), reference_layer(layer, u, 6), atol=1e-5)


def test_channel_weights_sum_to_one_at_every_budget():
    layer = make_layer()
    u = torch.randn(2, 10, 8)
    for k in range(1, 7):
        alpha = layer.channel_weights(u, k)
        assert alpha.shape == (2, 10, k)
        assert torch.allclose(alpha.sum(-1), torch.ones(2, 10), atol=1e-6)


def test_unnormalised_layer_is_the_plain_spectral_sum():
    """normalize=False (the fixed-budget SSM): every channel weighs 1, so truncation drops terms."""
    layer = make_layer(gate=False, normalize=False)
    u = torch.randn(2, 10, 8)
    for k in (1, 4, 6):
        assert torch.equal(layer.channel_weights(u, k), torch.ones(2, 10, k))
    with pytest.raises(ValueError, match="layer.normalize=False .* needs layer.gate=False"):
        ESSSMSettings(gate=True, normalize=False)


def test_weights_scaled_to_k_give_the_plain_sum_gain():
    """weight_sum="k" (an ablation): the active weights sum to k; without the gate that is the
    plain spectral sum exactly."""
    gated = make_layer(weight_sum="k")
    u = torch.randn(2, 10, 8)
    for k in (1, 4, 6):
        assert torch.allclose(gated.channel_weights(u, k).sum(-1), torch.full((2, 10), float(k)), atol=1e-5)
    scaled, plain = make_layer(gate=False, weight_sum="k"), make_layer(gate=False, normalize=False)
    assert torch.allclose(scaled(u, budget=4), plain(u, budget=4))
    with pytest.raises(ValueError, match="layer.weight_sum must be one of"):
        ESSSMSettings(weight_sum="two")
    with pytest.raises(ValueError, match="with layer.normalize=False they are 1 already"):
        ESSSMSettings(gate=False, normalize=False, weight_sum="k")


@pytest.mark.parametrize("k", [1, 2, 4])
def test_truncation_invariance_and_zero_gradients(k):
    layer = make_layer()
    u = torch.randn(2, 32, 8)
    before = layer(u, budget=k)
    with torch.no_grad():  # perturb everything that belongs to channels beyond k
        layer.mix[k:].add_(torch.randn_like(layer.mix[k:]))
        layer.gate_out.weight[k:].add_(1.0)
        layer.gate_out.bias[k:].add_(1.0)
        layer.phi[:, k:].mul_(-3.0)
        layer.sigma[k:].mul_(7.0)
    after = layer(u, budget=k)
    assert torch.equal(before, after)
    after.square().sum().backward()
    assert torch.count_nonzero(layer.mix.grad[k:]) == 0
    assert torch.count_nonzero(layer.gate_out.weight.grad[k:]) == 0
    assert torch.count_nonzero(layer.gate_out.bias.grad[k:]) == 0
    assert torch.count_nonzero(layer.mix.grad[:k]) > 0
    assert layer.skip.weight.grad.abs().sum() > 0
    if k > 1:  # with one active channel the softmax is constant 1: the gate has nothing to learn
        assert layer.gate_in.weight.grad.abs().sum() > 0


def test_gradients_match_finite_differences():
    layer = make_layer(d=4, seq_len=12, k_max=3).double()
    u = torch.randn(1, 12, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: layer(x, budget=2), (u,))


@pytest.mark.parametrize("budget", [0, 7, -1, 2.5, "3", True])
def test_bad_budget_names_valid_range(budget):
    layer = make_layer()
    with pytest.raises(ValueError, match=r"\[1, 6\]"):
        layer(torch.randn(1, 4, 8), budget=budget)


def test_bad_shapes_raise_clear_errors():
    layer = make_layer()
    with pytest.raises(ValueError, match="d_model=8"):
        layer(torch.randn(1, 4, 5))
    with pytest.raises(ValueError, match="d_model=8"):
        layer(torch.randn(4, 8))
    with pytest.raises(ValueError, match="seq_len=32"):
        layer(torch.randn(1, 33, 8))


def test_filters_are_persistent_buffers_and_spectra_follow_loaded_filters():
    layer = make_layer()
    state = layer.state_dict()
    assert "phi" in state and "sigma" in state
    u = torch.randn(1, 32, 8)
    out = layer(u)
    other = make_layer()
    with torch.no_grad():
        other.phi.mul_(2.0)
    other(u)  # populate its spectra cache with the altered filters
    other.load_state_dict(state)
    assert torch.allclose(other(u), out, atol=1e-6)


def test_inactive_parameters_scale_with_budget():
    layer = make_layer(d=8, k_max=6)
    per_channel = 8 * 8 + 4 + 1
    assert layer.inactive_parameters(None) == 0
    assert layer.inactive_parameters(2) == 4 * per_channel
    ungated = make_layer(d=8, k_max=6, gate=False)
    assert ungated.gate_in is None and ungated.inactive_parameters(2) == 4 * 8 * 8
