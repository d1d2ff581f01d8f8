"""The models trace: torch.compile(fullgraph=True) equals eager (inference and training, several
budgets) and torch.export exports a model at a fixed budget."""

import pytest
import torch

from baselines.stu import ARSTU, FixedSpectralSSM
from esssm.batch import PAD
from esssm.model import ESSSM, SequenceClassifier

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test compiles from scratch: Dynamo's per-function caches (and recompile limit) would
    otherwise carry over between the models of different tests."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()

D, L, K = 16, 48, 6
BACKBONES = {
    "esssm": lambda: ESSSM(D, 2, seq_len=L, k_max=K, dropout=0.0, drop_path=0.0),
    "esssm_reference": lambda: ESSSM(D, 2, seq_len=L, k_max=K, dropout=0.0, drop_path=0.0, layer={"fast": False}),
    "esssm_checkpoint": lambda: ESSSM(D, 2, seq_len=L, k_max=K, dropout=0.0, drop_path=0.0, layer={"checkpoint": True}),
    "fixed": lambda: FixedSpectralSSM(d_model=D, n_layers=2, seq_len=L, k_max=K, dropout=0.0, drop_path=0.0),
    "arstu": lambda: ARSTU(D, 2, seq_len=L, num_filters=4, dropout=0.0, drop_path=0.0),
}


def classifier(name: str) -> SequenceClassifier:
    torch.manual_seed(0)
    model = SequenceClassifier(BACKBONES[name](), num_classes=3, vocab_size=11, embed_dropout=0.0)
    for p in model.parameters():  # lift the mixing matrices off their 1e-3 init: a visible spectral path
        p.data.add_(0.05 * torch.randn_like(p))
    return model


def inputs(batch: int = 3, length: int = L) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, length // 2 :] = False
    return torch.randint(11, (batch, length), generator=gen), mask


def budgets(model: torch.nn.Module) -> list[int | None]:
    return [1, 3, None] if model.k_max else [None]


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal to float32 round-off, relative to the output's scale (1e-5)."""
    scale = expected.abs().max().clamp_min(1e-6)
    assert float((got - expected).abs().max() / scale) < 1e-5


def grads(model: torch.nn.Module, forward, budget) -> list[torch.Tensor]:
    model.zero_grad()
    forward(*inputs(), budget=budget).square().mean().backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", list(BACKBONES))
def test_fullgraph_compile_equals_eager_in_inference_and_training(name):
    """aot_eager traces the whole forward and backward (graph, decompositions, custom ops)
    without Inductor's code generation; Inductor itself is checked below."""
    model = classifier(name)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    model.eval()
    with torch.no_grad():
        for k in budgets(model):
            assert_close(compiled(*inputs(), budget=k), model(*inputs(), budget=k))
    model.train()
    for k in budgets(model):
        eager = grads(model, model, k)
        traced = grads(model, compiled, k)
        assert len(eager) == len(traced) > 0
        for a, b in zip(traced, eager):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_the_compile_runtime_compiles_every_budget_before_timing_starts():
    """`esssm plan --runtime compile`: each budget called once while preparing (with progress),
    so the timed rounds run compiled code, and each call gives the eager logits."""
    from esssm import infer

    model = classifier("esssm").eval()
    x, mask = inputs()
    example = {"x": x, "mask": mask}
    ready = []
    forwards = infer.budget_forwards("compile", model, {}, example, [1, 3, K], advance=lambda: ready.append(1))
    assert len(ready) == 3
    with torch.no_grad():
        for k, forward in forwards.items():
            assert_close(forward(), model(x, mask, budget=k))


def check_inductor(name: str, lengths: tuple[int, ...], budgets: tuple[int | None, ...]) -> None:
    """Inductor's generated code equals eager in inference (each length and budget) and in a
    training step at budget 2. Each shape and budget is one C++ compilation (seconds each)."""
    model = classifier(name).eval()
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        for length in lengths:
            for k in budgets:
                assert_close(compiled(*inputs(2, length), budget=k), model(*inputs(2, length), budget=k))
    model.train()
    eager, traced = grads(model, model, 2), grads(model, compiled, 2)
    for a, b in zip(traced, eager):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.e2e
def test_inductor_compile_equals_eager():
    check_inductor("esssm", (L,), (2, None))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_inductor_compile_equals_eager_at_every_shape(name):
    check_inductor(name, (L, L // 2), (1, 4, None))


def test_one_graph_serves_every_length():
    """Traced passes use one FFT size for every length, so after Dynamo's first recompile (which
    makes the length dynamic) a new length compiles nothing (batches padded to their longest)."""
    model = classifier("esssm").eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    counters = torch._dynamo.utils.counters["stats"]
    with torch.no_grad():
        for length in (L, 40):
            compiled(*inputs(2, length), budget=3)
        graphs = counters["unique_graphs"]
        for length in (33, 17, L - 1, 2):
            assert_close(compiled(*inputs(2, length), budget=3), model(*inputs(2, length), budget=3))
    assert counters["unique_graphs"] == graphs


@pytest.mark.parametrize("name", ["esssm", "esssm_reference", "arstu"])
def test_torch_export_at_a_fixed_budget(name):
    model = classifier(name).eval()
    k = 2 if model.k_max else None

    class AtBudget(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.model(x, mask, budget=k)

    exported = torch.export.export(AtBudget(), inputs())
    with torch.no_grad():
        assert_close(exported.module()(*inputs()), model(*inputs(), budget=k))


@pytest.mark.e2e
def test_lightning_trains_compiled_like_eager(tmp_path):
    """SequenceModule(compile=True), the `model.compile: true` config switch: a few optimizer steps
    under budget dropout end with the weights of the same steps in eager mode, and the
    checkpointed state dict has the eager model's keys."""
    import lightning as L

    from esssm.lab.loading import load_module
    from esssm.train.lit import SequenceModule
    from toy_data import ToyDataModule

    def fit(compile: bool) -> SequenceModule:
        L.seed_everything(0)
        backbone = ESSSM(d_model=16, n_layers=1, seq_len=24, k_max=4, dropout=0.0, drop_path=0.0)
        task = SequenceModule(
            backbone, num_classes=3, vocab_size=8, lr=3e-3, budget={"warmup_epochs": 0}, embed_dropout=0.0,
            compile=compile,
        )
        trainer = L.Trainer(
            default_root_dir=tmp_path, accelerator="cpu", max_steps=3, logger=False, limit_val_batches=0,
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
        )
        trainer.fit(task, ToyDataModule())
        trainer.save_checkpoint(tmp_path / f"compile{compile}.ckpt")
        return task

    eager, compiled = fit(False), fit(True)
    assert compiled.model._compiled_call_impl is not None
    loaded = load_module(tmp_path / "compileTrue.ckpt")  # tools evaluate and export: never compiled
    assert loaded.hparams.compile is False and loaded.model._compiled_call_impl is None
    assert eager.state_dict().keys() == compiled.state_dict().keys()
    for (name, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        if name.endswith("encoder.proj.weight"):
            # The PAD token's row: seen only at padded positions, its true gradient is 0 and the
            # FFT round-off it gets instead (~1e-10) differs between the two runs; AdamW scales
            # any nonzero gradient up to a fraction of lr per step.
            a, b = a[PAD + 1 :], b[PAD + 1 :]
        if a.is_floating_point():
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
