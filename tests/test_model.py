"""Backbone, pooling, heads, active-parameter counts, and a tiny model that overfits."""

import pytest
import torch

from esssm.model import (
    ESSSM,
    RetrievalClassifier,
    SequenceClassifier,
    active_parameters,
    count_parameters,
    masked_mean,
)


def tiny_backbone(**kw) -> ESSSM:
    args = dict(d_model=16, n_layers=2, seq_len=24, k_max=4, dropout=0.0, drop_path=0.0)
    return ESSSM(**{**args, **kw})


def test_masked_mean_ignores_padding():
    h = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pooled = masked_mean(h, mask)
    assert torch.allclose(pooled[0], h[0, :2].mean(0))
    assert torch.allclose(pooled[1], h[1].mean(0))


def test_classifier_shapes_budget_and_padding_invariance():
    torch.manual_seed(0)
    model = SequenceClassifier(tiny_backbone(), num_classes=5, vocab_size=11).eval()
    x = torch.randint(1, 11, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.bool)
    logits = model(x, mask, budget=2)
    assert logits.shape == (3, 5)
    padded = torch.cat([x, torch.zeros(3, 4, dtype=torch.long)], dim=1)
    pad_mask = torch.cat([mask, torch.zeros(3, 4, dtype=torch.bool)], dim=1)
    assert torch.allclose(model(padded, pad_mask, budget=2), logits, atol=1e-5)
    assert not torch.allclose(model(x, mask, budget=4), logits)
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        model(x, mask, budget=5)


def test_continuous_inputs_and_encoder_errors():
    model = SequenceClassifier(tiny_backbone(), num_classes=3, input_dim=2)
    assert model(torch.randn(2, 10, 2)).shape == (2, 3)
    with pytest.raises(ValueError, match="exactly one"):
        SequenceClassifier(tiny_backbone(), num_classes=3)
    with pytest.raises(ValueError, match="float"):
        model(torch.randint(0, 3, (2, 10)))


def head_input(model: RetrievalClassifier, x1, x2) -> torch.Tensor:
    """The (B, 4D) input [a, b, a-b, a*b] the retrieval head receives for documents x1, x2."""
    seen = []
    hook = model.head.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    logits = model(x1, x2, budget=3)
    hook.remove()
    assert logits.shape == (x1.shape[0], 2)
    return seen[0]


def trained_by(model: RetrievalClassifier, x1, x2, block: int) -> set[str]:
    """Names of the parameters that get a gradient from one D-wide block of the head input."""
    model.zero_grad(set_to_none=True)
    d = model.backbone.d_model
    head_input(model, x1, x2)[:, block * d : (block + 1) * d].sum().backward()
    return {name for name, p in model.named_parameters() if p.grad is not None and p.grad.any()}


def test_retrieval_head_shares_backbone():
    torch.manual_seed(0)
    model = RetrievalClassifier(tiny_backbone(), num_classes=2, vocab_size=11).eval()
    classifier = SequenceClassifier(tiny_backbone(), num_classes=2, vocab_size=11)
    # one encoder and one backbone: a classifier's parameters, with the MLP for the linear head
    assert count_parameters(model) == (
        count_parameters(classifier) - count_parameters(classifier.head) + count_parameters(model.head)
    )
    x1, x2 = torch.randint(1, 11, (2, 12)), torch.randint(1, 11, (2, 9))
    a, b = model.features(x1, budget=3), model.features(x2, budget=3)
    assert not torch.allclose(a, b)
    assert torch.equal(head_input(model, x1, x2), torch.cat([a, b, a - b, a * b], dim=-1))
    assert torch.equal(head_input(model, x2, x1), torch.cat([b, a, b - a, b * a], dim=-1))
    d = model.backbone.d_model
    assert not head_input(model, x1, x1)[:, 2 * d : 3 * d].any()  # a - b of identical documents
    # document 1 alone (the a block) and document 2 alone (the b block) train the same backbone
    from_doc1, from_doc2 = trained_by(model, x1, x2, block=0), trained_by(model, x1, x2, block=1)
    backbone = {f"backbone.{name}" for name, _ in model.backbone.named_parameters()}
    assert from_doc2 == from_doc1 and from_doc2 & backbone and from_doc2 <= backbone | {"encoder.proj.weight"}


def test_drop_path_schedule_rises_linearly():
    backbone = ESSSM(d_model=8, n_layers=3, seq_len=8, k_max=2, drop_path=0.1)
    rates = [block.drop_path.p for block in backbone.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1])


def test_active_parameters():
    model = SequenceClassifier(tiny_backbone(), num_classes=5, vocab_size=11)
    total = count_parameters(model)
    assert active_parameters(model) == total
    per_channel = 16 * 16 + 8 + 1
    assert active_parameters(model, 1) == total - 2 * 3 * per_channel


@pytest.mark.e2e
def test_tiny_model_overfits_small_batch():
    torch.manual_seed(0)
    model = SequenceClassifier(tiny_backbone(d_model=32), num_classes=4, vocab_size=9)
    x = torch.randint(1, 9, (16, 24))
    y = torch.randint(0, 4, (16,))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < 0.1
    assert (model(x).argmax(-1) == y).float().mean() == 1.0


def test_activation_checkpointing_gives_the_same_gradients():
    x = torch.randn(2, 24, 16, requires_grad=True)
    grads = []
    for checkpoint in (False, True):
        torch.manual_seed(0)
        backbone = tiny_backbone(layer={"checkpoint": checkpoint})
        backbone(x, budget=3).square().sum().backward()
        grads.append((x.grad.clone(), backbone.blocks[0].mixer.mix.grad.clone()))
        x.grad = None
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_mixing_matrices_start_at_the_configured_scale():
    """The backbone passes mix_init_std to every layer (the authors' 1e-3 by default)."""
    for std in (1e-3, 1.6e-2):
        model = ESSSM(d_model=64, n_layers=2, seq_len=32, k_max=8, layer={"mix_init_std": std})
        for layer in (block.mixer for block in model.blocks):
            assert layer.mix.std().item() == pytest.approx(std, rel=0.05)
