"""The commands a user types: `lightning fit --config`, resume, TensorBoard content, `esssm sweep`."""

import sys

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from esssm.lab.cli import lightning_main, main


def write_config(tmp_path):
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "max_epochs": 2, "log_every_n_steps": 1, "enable_progress_bar": False,
            "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                       "init_args": {"save_dir": str(tmp_path / "runs"), "name": "toy", "version": "run1"}},
        },
        "model": {
            "backbone": {"class_path": "esssm.model.ESSSM",
                         "init_args": {"d_model": 16, "n_layers": 1, "seq_len": 24, "k_max": 4}},
            "lr": 0.003, "ema_decay": 0.9, "budget": {"warmup_epochs": 0},
        },
        "data": {"class_path": "toy_data.ToyDataModule", "init_args": {"train_size": 64, "val_size": 21}},
        "sweep": {"val_budgets": "all", "every_n_epochs": 1},
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def scalars_and_images(run_dir):
    tags = {"scalars": set(), "images": set()}
    for events in run_dir.glob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
        accumulator.Reload()
        for kind in tags:
            tags[kind] |= set(accumulator.Tags()[kind])
    return tags


def test_fit_resume_tensorboard_and_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["lightning"])
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    lightning_main(["fit", "--config", str(config)])
    run_dir = tmp_path / "runs" / "toy" / "run1"
    ckpt_dir = run_dir / "checkpoints"
    assert (ckpt_dir / "last.ckpt").exists() and list(ckpt_dir.glob("best-*.ckpt"))
    assert (ckpt_dir / "budget_curve_val.csv").exists() and (run_dir / "config.yaml").exists()
    tags = scalars_and_images(run_dir)
    assert {f"val/acc@k{k}" for k in range(1, 5)} <= tags["scalars"]
    assert {"val/budget_auc", "val/k98", "train/budget", "val/acc"} <= tags["scalars"]
    assert "val/budget_curve" in tags["images"]

    # Resume the same run for one more epoch: it continues from the saved global step.
    lightning_main(["fit", "--config", str(config), "--trainer.max_epochs", "3", "--ckpt_path", "last"])
    import torch

    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["global_step"] == 3 * 4

    capsys.readouterr()
    assert main(["sweep", "--ckpt", str(ckpt_dir / "last.ckpt"), "--data-config", str(config),
                 "--budgets", "all", "--split", "val"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["budget", "acc", "%"]
    assert [line.split()[0] for line in table[1:]] == ["1", "2", "3", "4"]
    assert all(line.split()[-1] == "21" for line in table[1:])  # every validation example once


def test_bad_inputs_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["esssm"])
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        main(["sweep", "--ckpt", str(tmp_path / "none.ckpt"), "--data-config", str(write_config(tmp_path))])
    with pytest.raises(FileNotFoundError, match="data config"):
        main(["sweep", "--ckpt", "x.ckpt", "--data-config", str(tmp_path / "none.yaml")])


def test_a_fit_stopped_by_max_steps_has_a_budget_curve(tmp_path, monkeypatch):
    """`lightning fit --trainer.max_steps` ends mid-epoch, long before the scheduled sweep epoch:
    its end still logs every budget and writes the curve, at the step it stopped."""
    import csv

    monkeypatch.setattr(sys, "argv", ["lightning"])
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)
    lightning_main(["fit", "--config", str(config), "--sweep.every_n_epochs", "10", "--trainer.max_steps", "6"])
    run_dir = tmp_path / "runs" / "toy" / "run1"
    rows = list(csv.DictReader(open(run_dir / "checkpoints" / "budget_curve_val.csv")))
    expected = [(str(k), "1", "6", "21") for k in range(1, 5)]  # budget, epoch, step, examples
    assert [(r["budget"], r["epoch"], r["step"], r["count"]) for r in rows] == expected
    import torch

    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert (last["epoch"], last["global_step"]) == (1, 6)  # the curve is that checkpoint's
    assert {f"val/acc@k{k}" for k in range(1, 5)} | {"val/budget_auc"} <= scalars_and_images(run_dir)["scalars"]
