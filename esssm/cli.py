"""Command line: `lightning`/`esssm` fit|validate|test|predict (LightningCLI), plus `esssm sweep`.

    lightning fit --config conf/listops/esssm.yaml
    esssm sweep --ckpt runs/.../checkpoints/last.ckpt --data-config conf/listops/esssm.yaml
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from esssm.callbacks import BudgetSweep
from esssm.lit import SequenceTask

DATA_LINKS = ("num_classes", "vocab_size", "input_dim", "task")


class ESSSMCLI(LightningCLI):
    """LightningCLI with the datamodule's shape facts linked into the model, a budget sweep,
    best/last checkpoints, TensorBoard logging by default, and AMP on GPUs."""

    def add_arguments_to_parser(self, parser) -> None:
        for name in DATA_LINKS:
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        parser.add_lightning_class_args(BudgetSweep, "sweep")
        # Two checkpoints: the best by full-budget validation accuracy, and last.ckpt rewritten at
        # every epoch end. Lightning's own save_last only refreshes last.ckpt when a new best is
        # saved, so a resume would silently drop the epochs since the last improvement.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-epoch{epoch}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "last_checkpoint.filename": "last",
                "last_checkpoint.enable_version_counter": False,
            }
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.config.get("subcommand"), self.config)
        trainer = config["trainer"]
        if trainer.get("precision") is None and torch.cuda.is_available():
            trainer["precision"] = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def _cli(args: list[str] | None) -> ESSSMCLI:
    return ESSSMCLI(
        SequenceTask,
        L.LightningDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "esssm", "default_hp_metric": False},
            },
            "callbacks": [LearningRateMonitor(logging_interval="step")],
        },
        parser_kwargs={
            "description": "ES-SSM Lab. Lightning subcommands below; also `esssm sweep --help`."
        },
        args=args,
    )


def _tools() -> dict[str, Callable[[list[str]], int]]:
    from esssm import commands

    return commands.TOOLS


def main(argv: list[str] | None = None) -> int:
    """`esssm`: the project's own tools (sweep, ...) or the Lightning subcommands."""
    argv = sys.argv[1:] if argv is None else argv
    tools = _tools()
    if argv and argv[0] in tools:
        return tools[argv[0]](argv[1:])
    _cli(argv)
    return 0


def lightning_main(argv: list[str] | None = None) -> int:
    """`lightning`: fit | validate | test | predict with --config conf/<task>/<model>.yaml."""
    _cli(sys.argv[1:] if argv is None else argv)
    return 0
