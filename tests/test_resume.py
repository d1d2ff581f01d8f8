"""Exact mid-epoch resume: a run killed at step n and resumed from its checkpoint ends with the
same weights, bit for bit on CPU, as the uninterrupted run (classification and byte-level LM)."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from datamodules import ByteLMDataModule, ListOpsDataModule
from datamodules.base import SPLITS
from datamodules.batching import ResumableLoader
from esssm.model import ESSSM
from esssm.train.lit import SequenceModule
from test_datamodules_common import LISTOPS_ROWS


def listops(folder: Path) -> ListOpsDataModule:
    folder.mkdir()
    for split in SPLITS:
        (folder / f"basic_{split}.tsv").write_text("Source\tTarget\n" + LISTOPS_ROWS * 22)
    return ListOpsDataModule(data_dir=str(folder), max_len=32, batch_size=8, seed=5)


def byte_lm(folder: Path) -> ByteLMDataModule:
    folder.mkdir()
    for i in range(40):  # documents are split by path hash: enough of them for all three splits
        (folder / f"doc{i}.txt").write_text(f"def f{i}(x):\n    return x * {i} + {i % 7}\n" * 6)
    return ByteLMDataModule(data_dir=str(folder), seq_len=32, batch_size=4, seed=5)


def train(datamodule, epochs: int, root: Path, every_n_steps: int | None = None, ckpt: Path | None = None):
    """A fresh task (same initial weights) trained to the end of `epochs`, optionally from `ckpt`
    and saving a checkpoint every `every_n_steps`; returns its final state dict."""
    L.seed_everything(0)
    backbone = ESSSM(d_model=16, n_layers=2, seq_len=datamodule.seq_len, k_max=4, dropout=0.1, drop_path=0.2)
    task = SequenceModule(backbone, num_classes=datamodule.num_classes, vocab_size=datamodule.vocab_size,
                        objective=datamodule.objective, lr=3e-3, ema_decay=0.9,
                        budget={"warmup_epochs": 0, "grid": None, "k_min": 1})
    callbacks = [ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=every_n_steps,
                                 save_top_k=-1)] if every_n_steps else []
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=bool(callbacks), callbacks=callbacks,
                        num_sanity_val_steps=0, deterministic=True)
    torch.manual_seed(1234)  # a resumed process starts from some other random state
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*not resumable.*")
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt)
    return {k: v.clone() for k, v in task.state_dict().items()}, trainer


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ after resume: {different[:5]}"


@pytest.mark.e2e
@pytest.mark.parametrize("make,epochs,kill_at", [(listops, 2, 8), (byte_lm, 1, 3)], ids=["listops", "byte_lm"])
def test_killed_mid_epoch_and_resumed_ends_with_the_same_weights(tmp_path, make, epochs, kill_at):
    datamodule = make(tmp_path / "data")
    full, trainer = train(datamodule, epochs, tmp_path / "ckpts", every_n_steps=kill_at)
    per_epoch = trainer.num_training_batches
    assert kill_at % per_epoch != 0 and trainer.global_step > kill_at  # the kill is inside an epoch
    ckpt = tmp_path / "ckpts" / f"step={kill_at}.ckpt"
    assert torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": kill_at // per_epoch, "batches_done": kill_at % per_epoch}]
    resumed, resumed_trainer = train(datamodule, epochs, tmp_path / "unused", ckpt=ckpt)
    assert resumed_trainer.global_step == trainer.global_step
    assert_identical(full, resumed)


def test_resumed_loader_continues_the_epoch_order(tmp_path):
    datamodule = listops(tmp_path / "data")
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert isinstance(loader, ResumableLoader)
    loader.sampler.set_epoch(1)
    epoch1 = [batch["index"].tolist() for batch in loader]
    fresh = datamodule.train_dataloader()
    fresh.load_state_dict({"epoch": 1, "batches_done": 2})
    fresh.sampler.set_epoch(1)
    assert [batch["index"].tolist() for batch in fresh] == epoch1[2:]
    assert fresh.state_dict() == {"epoch": 1, "batches_done": len(epoch1)}
    assert [batch["index"].tolist() for batch in fresh] == epoch1  # the skip applies to one pass only
