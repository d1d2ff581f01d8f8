"""Trained runs as objects: the LightningModule of a checkpoint, its evaluation model, an exported model,
and the datamodule of a config. Used by the `esssm` tools, ./reproduce.sh and the smoke checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from esssm.checkpoints import LOAD_ERRORS, CheckpointError, read_checkpoint, require_finite_weights
from esssm.files import file_sha256
from esssm.infer.export import EXPORT_FORMAT, load_exported
from esssm.infer.model import model_config
from esssm.migrations import migrate_checkpoint
from esssm.train.lit import SequenceModule


def load_module(ckpt: str | Path, map_location: str = "cpu", trust: bool = False) -> SequenceModule:
    """The trained module from a checkpoint; the backbone is rebuilt from its stored spec.

    The file is checked first (sha256 sidecar, truncation; errors name it) and loaded weights
    only; trust=True (`--trust-checkpoint`) unpickles it in full, which runs any code it names.
    The checkpoint is brought to the current schema first (esssm.migrations); one from a newer
    version of the project is refused. `module.source` records which file it came from: checkpoint
    name, sha256, epoch and global step.
    """
    path = Path(ckpt)
    checkpoint = read_checkpoint(path, map_location, weights_only=not trust)
    try:
        migrate_checkpoint(checkpoint, f"checkpoint {path}")
        module = module_from_checkpoint(checkpoint)
    except ValueError as error:  # a newer schema, or a backbone spec that names no backbone class
        raise CheckpointError(f"checkpoint {path} cannot be rebuilt: {error}") from error
    module.source = {
        "checkpoint": path.name, "sha256": file_sha256(path),
        "epoch": checkpoint.get("epoch"), "step": checkpoint.get("global_step"),
    }
    return module.to(map_location)


def module_from_checkpoint(checkpoint: dict[str, Any]) -> SequenceModule:
    """The module of a checkpoint dict at the current schema: built from its hyperparameters with
    compile=False (compiling is a training setting; tools evaluate, export and trace the model),
    then its weights and random state loaded. Keys starting with "_" are Lightning's CLI records
    (`_instantiator`), not arguments."""
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    module = SequenceModule(**{**hparams, "compile": False})
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])
    return module


def load_eval_model(ckpt: str | Path, trust: bool = False) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """The evaluation weights (EMA when enabled) of a checkpoint, their `model_config` and the
    checkpoint's `source` record; a model with NaN/inf weights is refused. trust: see `load_module`."""
    module = load_module(ckpt, trust=trust)
    require_finite_weights(module.eval_model.state_dict(), f"checkpoint {ckpt}")
    return module.eval_model.eval(), model_config(module.hparams), module.source


def load_language_model(path: str | Path, trust: bool = False) -> torch.nn.Module:
    """The model of an `esssm export` file, or the evaluation (EMA) weights of a training
    checkpoint; both in eval mode. An export always loads weights only; trust (see `load_module`)
    applies to a file that is not one."""
    if _is_export(Path(path)):
        return load_exported(path)
    return load_eval_model(path, trust)[0]


def _is_export(path: Path) -> bool:
    """Whether `path` holds an `esssm export` payload (memory-mapped, weights-only peek; a file
    that fails it is read as a checkpoint, whose loader names the problem)."""
    if not path.is_file():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except LOAD_ERRORS:
        return False
    return isinstance(payload, dict) and payload.get("format") == EXPORT_FORMAT


def load_datamodule(config: str | Path, overrides: dict[str, Any] | None = None) -> L.LightningDataModule:
    """Instantiate the `data:` section of a YAML config (a full fit config works), with overrides
    of its init_args (e.g. data_dir, batch_size)."""
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"data config {path} does not exist (see conf/<task>/*.yaml)")
    raw = yaml.safe_load(path.read_text()) or {}
    spec = raw.get("data", raw)
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{path} has no 'data: {{class_path: ..., init_args: ...}}' section")
    return instantiate_datamodule({**spec, "init_args": {**spec.get("init_args", {}), **(overrides or {})}})


def instantiate_datamodule(spec: dict[str, Any]) -> L.LightningDataModule:
    """A datamodule from {"class_path", "init_args"}, type-checked as LightningCLI would."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    return parser.instantiate(parser.parse_object({"data": spec})).data
