"""Checkpoint and export migrations: old files load, new ones record the schema, newer ones are refused."""

from pathlib import Path

import pytest
import torch

from esssm import infer
from esssm.checkpoints import CheckpointError
from esssm.files import sidecar_path
from esssm.lab.loading import load_module
from esssm.migrations import SCHEMA_KEY, SCHEMA_VERSION, fold_budget_arguments, migrate_checkpoint
from esssm.model import ESSSM
from test_lit import make_task, trainer
from toy_data import ToyDataModule

FIXTURES = Path(__file__).parent / "fixtures"


def test_flat_budget_arguments_fold_into_the_budget_setting():
    settings = {"lr": 1.0, "budget_dropout": True, "budget_grid": [2, 8], "budget_k_min": 2,
                "budget_warmup_epochs": 1, "budget_full_every": 4, "budget_seed": 3}
    fold_budget_arguments(settings, lambda name: False)
    assert settings == {"lr": 1.0, "budget": {"grid": [2, 8], "k_min": 2, "warmup_epochs": 1, "full_every": 4,
                                              "seed": 3}}
    task = make_task(budget=settings["budget"])
    assert task.sampler.grid == [2, 8] and task.sampler.sample(0, 0) == 8
    fixed = {"budget_dropout": False, "budget_grid": [2, 8]}
    fold_budget_arguments(fixed, lambda name: False)
    assert fixed == {"budget": None}
    fold_budget_arguments(fixed, lambda name: False)  # a step leaves a file that does not need it alone
    assert fixed == {"budget": None}


@pytest.mark.parametrize("name, objective", [("listops_esssm.ckpt", "classification"), ("lm_fixed.ckpt", "lm")])
def test_the_fixtures_are_schema_0_and_migrate_to_the_current_version(name, objective):
    checkpoint = torch.load(FIXTURES / name, weights_only=True)
    assert SCHEMA_KEY not in checkpoint and checkpoint["hyper_parameters"]["task"] == objective
    migrate_checkpoint(checkpoint, name)
    assert checkpoint[SCHEMA_KEY] == SCHEMA_VERSION
    settings = checkpoint["hyper_parameters"]
    assert not any(key.startswith("budget_") for key in settings)
    assert settings["objective"] == objective and "task" not in settings


def test_a_new_checkpoint_and_export_carry_the_current_version(tmp_path):
    task = make_task()
    trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1, callbacks=[]).fit(
        task, ToyDataModule(seq_len=24))
    path = tmp_path / "task.ckpt"
    task.trainer.save_checkpoint(path)
    assert torch.load(path, weights_only=True)[SCHEMA_KEY] == SCHEMA_VERSION
    export = tmp_path / "k2.pt"
    model, config = infer.truncate(task.eval_model, infer.model_config(task.hparams), 2)
    infer.save_exported(model, config, export)
    assert torch.load(export, weights_only=True)[SCHEMA_KEY] == SCHEMA_VERSION


def test_a_checkpoint_from_a_newer_version_is_refused(tmp_path):
    task = make_task()
    path = tmp_path / "future.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                SCHEMA_KEY: SCHEMA_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match=f"future.ckpt was written by a newer ES-SSM Lab .*schema version "
                                              f"{SCHEMA_VERSION + 1}.*update the project"):
        load_module(path)


def test_an_export_from_a_newer_version_is_refused(tmp_path):
    backbone = ESSSM(d_model=8, n_layers=1, seq_len=12, k_max=4)
    model = infer.build_model({"backbone": {"class_path": "esssm.model.ESSSM", "init_args": backbone.init_args},
                                "objective": "classification", "num_classes": 3, "vocab_size": 8, "input_dim": None})
    path = tmp_path / "future.pt"
    infer.save_exported(model, {"objective": "classification"}, path)
    payload = torch.load(path, weights_only=True)
    payload[SCHEMA_KEY] = SCHEMA_VERSION + 1
    torch.save(payload, path)
    sidecar_path(path).unlink()
    with pytest.raises(ValueError, match="exported model .*future.pt was written by a newer ES-SSM Lab"):
        infer.load_exported(path)


@pytest.mark.parametrize("class_path, size, flat, expected", [
    ("esssm.model.ESSSM", {"k_max": 4}, {"gate": False, "fast": False}, {"gate": False, "fast": False, "normalize": True}),
    ("baselines.stu.FixedSpectralSSM", {"k_max": 4}, {"normalize": True, "channel_chunk": 2},
     {"gate": False, "rms_rescale": False, "normalize": True, "channel_chunk": 2}),
    ("baselines.ARSTU", {"num_filters": 2}, {"channel_chunk": 3}, {"channel_chunk": 3, "init_filters": True}),
])
def test_flat_layer_switches_nest_into_the_layer_setting(class_path, size, flat, expected):
    """Old specs had the switches flat; they become `layer`, over the class's own defaults."""
    from esssm.migrations import nest_layer_settings
    from esssm.model import build_module

    settings = {"backbone": {"class_path": class_path, "init_args": {"d_model": 8, "n_layers": 1, "seq_len": 12,
                                                                      **size, **flat}}}
    nest_layer_settings(settings, lambda name: False)
    assert settings["backbone"]["init_args"] == {"d_model": 8, "n_layers": 1, "seq_len": 12, **size, "layer": flat}
    recorded = build_module(settings["backbone"]).init_args["layer"]
    assert {name: recorded[name] for name in expected} == expected
