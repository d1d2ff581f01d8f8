"""The Lightning subcommands fit | validate | test: a LightningCLI with the project's defaults
(budget sweep, atomic checksummed checkpoints, TensorBoard, a run folder never overwritten or
shared). Imported by `esssm.lab.cli` only once the command line asks for a subcommand, so the
tools and `--help` answer without importing Lightning.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import socket
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse import DefaultHelpFormatter, Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from esssm.batch import DATA_FIELDS
from esssm.checkpoints import read_checkpoint, save_checked
from esssm.files import remove_with_sidecar
from esssm.migrations import migrate_checkpoint
from esssm.train import SUBCOMMANDS
from esssm.train.callbacks import BudgetSweep
from esssm.train.lit import SequenceModule

LOCK_FILE = "fit.lock"
FIT_OUTPUTS = ("checkpoints", "config.yaml", "hparams.yaml", "events.out.tfevents.*")  # what a fit writes
# How often last.ckpt is also written inside an epoch (Lightning's train_time_interval, "h:m:s"), so
# a killed run loses at most this much training; the write costs about a second at 20M parameters.
MID_EPOCH_INTERVAL = timedelta(minutes=10)
NAMED_CKPT_PATHS = ("last", "best", "hpc", "registry")
MatmulPrecision = Literal["highest", "high", "medium"]  # torch.set_float32_matmul_precision's values


class RunFolderError(OSError):
    """A fit would overwrite or share a run folder, or has nothing to resume (a state of the
    file system, like FileExistsError, so the command line reports it in one line)."""


# fit/validate/test never unpickle a checkpoint in full (Lightning's CLI itself reads a
# --ckpt_path file weights-only to take its hyperparameters); the tools can, on request.
FIT_TRUST_HINT = (
    "fit, validate and test read checkpoints weights-only, so it cannot be resumed or evaluated here; if you "
    "trust its source, the esssm tools (sweep, export, plan, cascade, generate) load it with --trust-checkpoint."
)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically (temporary file in the same folder, fsync, rename) with a
    sha256 sidecar, refusing NaN/inf weights; reads check the sidecar and name the file on error.
    A failed write (full disk, a kill) leaves the previous last.ckpt intact. Reads are always
    weights-only (Lightning's weights_only argument, `--weights_only`, is not honoured): a
    pickle that names code is refused, not run. A checkpoint read to resume is brought to the
    current schema (esssm.migrations)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        save_checked(path, checkpoint, checkpoint.get("state_dict", {}))

    def load_checkpoint(self, path, map_location=None, weights_only: bool | None = None) -> dict:
        return migrate_checkpoint(read_checkpoint(path, map_location, trust_hint=FIT_TRUST_HINT), f"checkpoint {path}")

    def remove_checkpoint(self, path) -> None:
        remove_with_sidecar(path)


class OptionalEarlyStopping(EarlyStopping):
    """Lightning's EarlyStopping behind one switch, so every config has the `early_stopping`
    setting and it stops nothing unless `enabled`. It checks after each validation pass (not at
    the end of a training epoch), on the full-budget (K_max) metric the module logs: `val/acc`,
    mode max, by default; the LM configs monitor `val/bpb`, mode min. The other arguments are
    EarlyStopping's (patience counts validation passes without an improvement of min_delta).

        early_stopping: {enabled: true, monitor: val/bpb, mode: min, patience: 10, min_delta: 1.0e-4}
        --early_stopping.enabled true --early_stopping.patience 5
    """

    def __init__(self, enabled: bool = False, monitor: str = "val/acc", mode: str = "max",
                 check_on_train_epoch_end: bool | None = False, **kwargs: Any) -> None:
        super().__init__(monitor=monitor, mode=mode, check_on_train_epoch_end=check_on_train_epoch_end, **kwargs)
        self.enabled = enabled

    def _should_skip_check(self, trainer: L.Trainer) -> bool:
        return not self.enabled or super()._should_skip_check(trainer)


class ESSSMCLI(LightningCLI):
    """LightningCLI with the datamodule's shape facts linked into the model, a budget sweep,
    optional early stopping and float32 matmul precision, best/last checkpoints written
    atomically with checksums, TensorBoard logging by default,
    AMP on GPUs, and a fit that never overwrites or shares a run folder."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: args for name, args in LightningCLI.subcommands().items() if name in SUBCOMMANDS}

    def add_arguments_to_parser(self, parser) -> None:
        for name in DATA_FIELDS:
            parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")
        parser.add_argument(
            "--overwrite", action="store_true",
            help="fit: replace the run in an existing run folder (its checkpoints, config and TensorBoard "
            "events are deleted) instead of refusing",
        )
        parser.add_lightning_class_args(BudgetSweep, "sweep")
        parser.add_lightning_class_args(OptionalEarlyStopping, "early_stopping")
        parser.add_argument(
            "--matmul_precision", type=MatmulPrecision | None, default=None,
            help="torch.set_float32_matmul_precision before the run: 'high' or 'medium' let float32 "
            "matmuls use TF32 (or bf16) tensor cores on Ampere and later GPUs; 'highest' is full float32; "
            "null (default) leaves PyTorch's setting",
        )
        # Checkpoints: the best by full-budget validation accuracy, and last.ckpt rewritten at every
        # epoch end and, by a third callback, every MID_EPOCH_INTERVAL of training inside an epoch
        # (the loader's position is in it: resume continues with the next batch). Lightning's own
        # save_last only refreshes last.ckpt when a new best is saved, so a resume would silently
        # drop the epochs since the last improvement. `--ckpt_path last` takes the newer write.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "last_checkpoint")
        parser.add_lightning_class_args(ModelCheckpoint, "mid_epoch_checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-epoch{epoch}-step{step}",
                "checkpoint.auto_insert_metric_name": False,
                "last_checkpoint.filename": "last",
                "last_checkpoint.enable_version_counter": False,
                "mid_epoch_checkpoint.filename": "last",
                "mid_epoch_checkpoint.enable_version_counter": False,
                "mid_epoch_checkpoint.train_time_interval": MID_EPOCH_INTERVAL,
                # No epoch-end write of its own (last_checkpoint does that); with the interval
                # set to null it then never writes.
                "mid_epoch_checkpoint.every_n_epochs": 0,
            }
        )

    def parse_arguments(self, parser, args) -> None:
        """Parse, then check a --ckpt_path file (checksum, readable, weights-only) before
        Lightning reads it."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in NAMED_CKPT_PATHS:
            read_checkpoint(ckpt_path, trust_hint=FIT_TRUST_HINT)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.config.get("subcommand"), self.config)
        trainer = config["trainer"]
        if config.get("matmul_precision") is not None:
            torch.set_float32_matmul_precision(config["matmul_precision"])
        if trainer.get("precision") is None and torch.cuda.is_available():
            trainer["precision"] = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        """The trainer, with AtomicCheckpointIO unless the config names another CheckpointIO."""
        plugins = self._get(self.config_init, "trainer", default={}).get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(**kwargs, plugins=plugins)

    def before_fit(self) -> None:
        """Lock the run folder first (so nothing of a run that another live fit is training is
        touched), then refuse to resume nothing or to overwrite a run unless told to."""
        if not self.trainer.is_global_zero:
            return
        run_dir = Path(self.trainer.log_dir or self.trainer.default_root_dir)
        release = lock_run_folder(run_dir)
        try:
            prepare_run_folder(run_dir, checkpoint_dir(self.trainer, run_dir), self.config["fit"])
        except BaseException:
            release()
            raise
        atexit.register(release)
        self.release_lock = release

    def after_fit(self) -> None:
        if getattr(self, "release_lock", None) is not None:
            self.release_lock()


def prepare_run_folder(run_dir: Path, ckpt_dir: Path, config: Namespace) -> None:
    """Refuse `--ckpt_path last` without a last.ckpt, and a new fit into a folder that holds a run
    unless `--overwrite`, which deletes that run's outputs. Call with the folder's lock held."""
    if config.get("ckpt_path") == "last" and not (ckpt_dir / "last.ckpt").is_file():
        raise RunFolderError(
            f"--ckpt_path last: there is nothing to resume, {ckpt_dir / 'last.ckpt'} does not exist. "
            "To resume a run, give the same fixed version it was trained with "
            "(--trainer.logger.init_args.version NAME); to start a new run, drop --ckpt_path"
        )
    earlier = fit_outputs(run_dir)
    if config.get("ckpt_path") is not None or not earlier:
        return
    if not config.get("overwrite"):
        raise RunFolderError(
            f"run folder {run_dir} already holds a run ({', '.join(earlier)}). "
            "Resume it with --ckpt_path last, train into another folder "
            "(--trainer.logger.init_args.version NAME), or replace it with --overwrite"
        )
    print(f"--overwrite: deleting the earlier run's {', '.join(earlier)} in {run_dir}", file=sys.stderr)
    for path in (run_dir / name for name in earlier):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def checkpoint_dir(trainer: L.Trainer, run_dir: Path) -> Path:
    """Where the last.ckpt callback writes: its dirpath, else `run_dir`/checkpoints (as Lightning)."""
    for callback in trainer.checkpoint_callbacks:
        if callback.dirpath:
            return Path(callback.dirpath)
    return run_dir / "checkpoints"


def fit_outputs(run_dir: Path) -> list[str]:
    """What an earlier fit wrote into a run folder (checkpoints, config, TensorBoard events)."""
    return sorted(p.name for pattern in FIT_OUTPUTS for p in run_dir.glob(pattern))


def lock_run_folder(run_dir: Path) -> Callable[[], None]:
    """Create run_dir/fit.lock (pid and host) or refuse while another live fit holds it.

    A lock left by a process that is gone (killed) is taken over. Returns the release function,
    which also removes run_dir if this call created it and it is still empty (a refused fit).
    """
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock, owner = run_dir / LOCK_FILE, f"{os.getpid()} {socket.gethostname()}"
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = lock.read_text().split() if lock.exists() else []
            if len(holder) == 2 and holder[1] == socket.gethostname() and not _alive(int(holder[0])):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            if holder and holder[0] == str(os.getpid()):
                break  # this process's own earlier fit
            raise RunFolderError(
                f"another fit ({' on '.join(holder) or 'unknown process'}) is training into {run_dir} "
                f"(lock {lock}); wait for it to finish, train into another folder, or delete the lock "
                "if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(owner)
        break

    def release() -> None:
        if lock.exists() and lock.read_text() == owner:
            lock.unlink()
        if created and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()

    return release


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultHelpFormatter):
    """jsonargparse's help, with the description's lines kept as written."""


def run_cli(args: list[str] | None, description: str) -> ESSSMCLI:
    """Parse `args` (fit|validate|test ...; None: sys.argv) and run the subcommand."""
    return ESSSMCLI(
        SequenceModule,
        L.LightningDataModule,
        subclass_mode_data=True,
        auto_configure_optimizers=False,
        # Safe: before_fit refuses to fit into a folder that holds a run unless resuming or --overwrite.
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "esssm", "default_hp_metric": False},
            },
            "callbacks": [LearningRateMonitor(logging_interval="step")],
        },
        parser_kwargs={"description": description, "formatter_class": HelpFormatter},
        args=args,
    )
