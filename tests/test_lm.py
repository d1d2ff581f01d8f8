"""Byte-level language modelling: data segments, strict causality, a tiny model that learns,
bits per byte at every budget."""

import math

import lightning as L
import pytest
import torch

from datamodules import ByteLMDataModule, DataFolderError
from esssm.model import ESSSM, LanguageModel
from esssm.train.callbacks import BudgetSweep
from esssm.train.lit import SequenceModule

TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def text_folder(tmp_path, documents=24):
    folder = tmp_path / "books"
    for i in range(documents):
        (folder / f"shelf{i % 3}").mkdir(parents=True, exist_ok=True)
        (folder / f"shelf{i % 3}" / f"book{i}.txt").write_text(f"book {i}: " + TEXT)
    return folder


def test_segments_are_shifted_windows_and_splits_are_by_document(tmp_path):
    dm = ByteLMDataModule(data_dir=str(text_folder(tmp_path)), seq_len=64, batch_size=4,
                          val_fraction=0.2, test_fraction=0.2)
    assert (dm.objective, dm.vocab_size, dm.num_classes, dm.seq_len) == ("lm", 257, 257, 64)
    dm.setup("fit")
    assert all(len(dm.datasets[s]) > 0 for s in ("train", "val", "test"))
    batch = next(iter(dm.val_dataloader()))
    assert batch["x"].shape == batch["y"].shape == (4, 64) and batch["mask"].all()
    assert torch.equal(batch["y"][:, :-1], batch["x"][:, 1:])  # y is x shifted by one byte
    assert batch["x"].min() >= 1 and batch["x"].max() <= 256
    again = ByteLMDataModule(data_dir=str(text_folder(tmp_path)), seq_len=64, batch_size=4,
                             val_fraction=0.2, test_fraction=0.2)
    again.setup("fit")
    assert torch.equal(next(iter(again.val_dataloader()))["x"], batch["x"])  # deterministic


def test_python_stdlib_source_and_hf_folder(tmp_path):
    stdlib = ByteLMDataModule(python_stdlib=True, seq_len=128, max_bytes=20_000)
    stdlib.setup("fit")
    assert len(stdlib.datasets["train"]) == (20_000 - 1) // 128
    import datasets

    texts = {split: datasets.Dataset.from_dict({"text": [TEXT] * 3}) for split in ("train", "validation", "test")}
    datasets.DatasetDict(texts).save_to_disk(str(tmp_path / "pg19"))
    hf = ByteLMDataModule(data_dir=str(tmp_path / "pg19"), hf_dataset="deepmind/pg19", seq_len=100)
    hf.setup("fit")
    assert len(hf.datasets["val"]) == (3 * len(TEXT) + 2 - 1) // 100


def test_eval_segments_cache_a_seeded_shuffled_book_stream(tmp_path):
    """eval_segments: val and test are exactly N segments of the split's books in a seeded order
    (the same on every run, another order for another seed); training keeps its whole split."""
    import datasets

    books = [f"book {i}: " + TEXT[: 50 * (i + 1)] for i in range(12)]
    texts = {split: datasets.Dataset.from_dict({"text": books}) for split in ("train", "validation", "test")}
    datasets.DatasetDict(texts).save_to_disk(str(tmp_path / "pg19"))

    def setup(**kwargs):
        dm = ByteLMDataModule(data_dir=str(tmp_path / "pg19"), hf_dataset="deepmind/pg19", seq_len=64, **kwargs)
        dm.setup("fit")
        return dm

    whole, cached, again, other = setup(), setup(eval_segments=5), setup(eval_segments=5), setup(eval_segments=5, seed=1)
    assert len(cached.datasets["val"]) == len(cached.datasets["test"]) == 5
    assert len(cached.datasets["train"]) == len(whole.datasets["train"]) > 5
    first = lambda dm: dm.datasets["val"][0]["x"]  # noqa: E731
    assert torch.equal(first(cached), first(again)) and not torch.equal(first(cached), first(whole))
    assert not torch.equal(first(cached), first(other))
    text = bytes((cached.datasets["val"][0]["x"] - 1).tolist()).decode()
    assert text.startswith("book ") and text != books[0][:64]  # a book from the shuffled order
    with pytest.raises(DataFolderError, match="eval_segments: 500 segments"):
        setup(eval_segments=500)
    with pytest.raises(ValueError, match="eval_segments must be >= 1"):
        ByteLMDataModule(python_stdlib=True, eval_segments=0)


def test_missing_or_too_small_data_explains_the_fix(tmp_path):
    with pytest.raises(DataFolderError, match="python_stdlib"):
        ByteLMDataModule(data_dir=str(tmp_path / "none")).setup("fit")
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "a.txt").write_text("short")
    with pytest.raises(DataFolderError, match="shorter than one segment"):
        ByteLMDataModule(data_dir=str(tmp_path / "tiny"), seq_len=64).setup("fit")


@pytest.mark.parametrize("budget", [1, 3, 8])
def test_causal_path_never_looks_ahead(budget):
    torch.manual_seed(0)
    model = LanguageModel(ESSSM(d_model=16, n_layers=2, seq_len=40, k_max=8, dropout=0.0), 257).eval()
    x = torch.randint(1, 257, (2, 40))
    changed = x.clone()
    changed[:, 25] = (x[:, 25] % 256) + 1
    with torch.no_grad():
        before, after = model(x, budget=budget), model(changed, budget=budget)
    assert before.shape == (2, 40, 257)
    # The FFT convolution is causal in exact arithmetic; float32 round-off of a length-2L
    # transform spreads ~1e-6 everywhere, far below the O(1) change after position t.
    leak = (before[:, :25] - after[:, :25]).abs().max()
    change = (before[:, 25:] - after[:, 25:]).abs().max()
    assert leak < 1e-4 and change > 1e-1, (leak, change)
    assert model.head.weight is model.encoder.proj.weight  # tied head


@pytest.mark.e2e
def test_tiny_lm_learns_and_sweep_reports_bits_per_byte(tmp_path):
    L.seed_everything(0)
    dm = ByteLMDataModule(data_dir=str(text_folder(tmp_path)), seq_len=64, batch_size=8,
                          val_fraction=0.2, test_fraction=0.2)
    task = SequenceModule(ESSSM(d_model=32, n_layers=2, seq_len=64, k_max=4, dropout=0.0), num_classes=257,
                        vocab_size=257, objective="lm", lr=3e-3, ema_decay=None, budget={"warmup_epochs": 0})
    trainer = L.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[BudgetSweep([1, 2, 4])], default_root_dir=tmp_path)
    trainer.fit(task, dm)
    metrics = trainer.callback_metrics
    assert metrics["val/bpb"] < 2.0  # from log2(257) = 8 bits at initialisation
    assert metrics["val/bpb@k4"] == pytest.approx(metrics["val/loss@k4"] / math.log(2))
    assert {"val/bpb@k1", "val/bpb@k2", "val/acc@k1"} <= set(metrics)


def test_default_block_is_the_authors():
    """Embedding dropout 0.1, N(0, 0.02^2) embeddings, tied head without bias, and Dropout only
    inside the FFN (none on the mixer branch)."""
    torch.manual_seed(0)
    model = LanguageModel(ESSSM(d_model=64, n_layers=2, seq_len=40, k_max=8), 257)
    assert model.head.bias is None and model.head.weight is model.encoder.proj.weight
    assert model.encoder.dropout.p == 0.1
    assert model.encoder.proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    dropouts = [name for name, m in model.backbone.named_modules()
                if isinstance(m, torch.nn.Dropout) and m.p > 0]
    assert dropouts and all(".ffn." in name for name in dropouts)


def test_checkpoint_with_an_lm_head_bias_and_no_flag_loads_with_the_bias(tmp_path):
    """A schema-0 LM checkpoint (head bias, no `lm_head_bias` hyperparameter) loads with it."""
    from esssm.lab.loading import load_module

    backbone = ESSSM(d_model=16, n_layers=1, seq_len=40, k_max=4)
    old = SequenceModule(backbone, vocab_size=257, objective="lm", lm_head_bias=True)
    with torch.no_grad():
        old.model.head.bias.normal_()
        old.ema.module.head.bias.copy_(old.model.head.bias)
    hparams = {k: v for k, v in old.hparams.items() if k not in ("lm_head_bias", "objective")}
    hparams["task"] = "lm"  # the objective's name then
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": old.state_dict(), "hyper_parameters": hparams,
                "pytorch-lightning_version": L.__version__}, path)
    loaded = load_module(path).eval()
    assert torch.equal(loaded.model.head.bias, old.model.head.bias)
    x = torch.randint(1, 257, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded.evaluate({"x": x}, 2), old.eval().evaluate({"x": x}, 2))


def test_lm_export_with_a_head_bias_and_no_flag_loads_with_the_bias(tmp_path):
    """A schema-0 export (written before the version and the `lm_head_bias` flag were recorded)."""
    from esssm import infer
    from esssm.files import sidecar_path
    from esssm.migrations import SCHEMA_KEY

    backbone = ESSSM(d_model=16, n_layers=1, seq_len=40, k_max=4)
    task = SequenceModule(backbone, vocab_size=257, objective="lm", lm_head_bias=True)
    config = infer.model_config(task.hparams)
    del config["lm_head_bias"]  # as written before the flag existed, when the objective was the task
    config["task"] = config.pop("objective")
    infer.save_exported(task.eval_model.eval(), config, tmp_path / "old.pt")
    payload = torch.load(tmp_path / "old.pt", weights_only=True)
    del payload[SCHEMA_KEY]
    torch.save(payload, tmp_path / "old.pt")
    sidecar_path(tmp_path / "old.pt").unlink()
    loaded = infer.load_exported(tmp_path / "old.pt")
    assert loaded.head.bias is not None
    x = torch.randint(1, 257, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, budget=2), task.eval_model.eval()(x, budget=2))
