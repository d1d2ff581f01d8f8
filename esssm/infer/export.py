"""Export: a model trained at k_max, cut to budget k, as a standalone checked file.

The exported model physically holds only channels 1..k of every ES-SSM layer (mix[:k],
gate_out rows [:k], phi[:, :k], sigma[:k]) and computes exactly what the full model computes at
budget k. The truncated filters are the stored ones, never recomputed: the top-k eigenvectors of
an (L, k) problem agree with those of (L, K) only up to numerics in the near-null space.
An exported file loads with `load_exported` and nothing but the model classes of this package.
TorchScript copies trace the reference mixing (`ESSSMSettings(fast=False)`); ONNX files are
written by esssm.infer.onnx.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esssm.batch import Batch, model_inputs
from esssm.checkpoints import load_checked, save_checked
from esssm.files import atomic_write, verify_checksum
from esssm.infer.model import batch_logits, build_model, elastic_k_max, model_config
from esssm.layer import ESSSMLayer, check_budget
from esssm.migrations import migrate_export, stamp
from esssm.model import count_parameters

EXPORT_FORMAT, EXPORT_VERSION = "esssm-export", 1
# Channel axis of every per-channel tensor of an ESSSMLayer's state dict.
CHANNEL_AXES = {"mix": 0, "gate_out.weight": 0, "gate_out.bias": 0, "sigma": 0, "phi": 1}


def truncated_state_dict(model: nn.Module, budget: int) -> dict[str, torch.Tensor]:
    """model's state dict with every ES-SSM layer cut to channels 1..budget (copies, so a saved
    file holds only the kept channels, not the storage of the full tensors)."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if isinstance(module, ESSSMLayer):
            for key, axis in CHANNEL_AXES.items():
                full = f"{name}.{key}"
                if full in state:
                    state[full] = state[full].narrow(axis, 0, budget).clone()
    return state


def truncate(model: nn.Module, config: Mapping[str, Any], budget: int) -> tuple[nn.Module, dict]:
    """A standalone model holding channels 1..budget only, and its config (k_max = budget).

    model: the full classifier (for a trained run, its EMA `eval_model`); config: its
    `model_config`. The result, called at its full budget, equals `model` at `budget`.
    """
    k_max = elastic_k_max(model)
    budget = check_budget(budget, k_max)
    small_config = model_config(config)
    init_args = small_config["backbone"].setdefault("init_args", {})
    if "k_max" not in init_args:
        raise ValueError(f"backbone spec {small_config['backbone']} records no k_max to truncate")
    init_args["k_max"] = budget
    small_config["exported"] = {"budget": budget, "from_k_max": k_max}
    small = build_model(small_config, init_filters=False)
    small.load_state_dict(truncated_state_dict(model, budget), strict=True)
    return small.eval(), small_config


def save_exported(
    model: nn.Module, config: Mapping[str, Any], path: str | Path, check: Callable[[str], Any] | None = None
) -> int:
    """Write {format, version, config, state_dict} atomically with a sha256 sidecar; returns the
    size in bytes. Non-finite weights are refused, and `check(tmp)` runs on the written file
    before it replaces `path`, so a failed export leaves an earlier file untouched."""
    state = model.state_dict()
    payload = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "config": dict(config), "state_dict": state}
    return save_checked(path, stamp(payload), state, check)


def load_exported(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The model of an exported file, in eval mode; its config is kept as `.export_config`.

    Needs no Lightning, training code or data; loads with weights_only=True (no pickled code).
    The file is checked against its sha256 sidecar and brought to the current schema
    (esssm.migrations); errors name it.
    """
    path = Path(path)
    payload = load_checked(path, "exported model", map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{path} is not an `esssm export` file (a Lightning checkpoint loads with "
            "esssm.lab.loading.load_module)"
        )
    if payload.get("version") != EXPORT_VERSION:
        raise ValueError(f"{path} has export version {payload.get('version')}, expected {EXPORT_VERSION}")
    config = migrate_export(payload, f"exported model {path}")["config"]
    model = build_model(config, init_filters=False)
    model.load_state_dict(payload["state_dict"], strict=True)
    model.export_config = payload["config"]
    return model.to(map_location).eval()


def state_bytes(model: nn.Module) -> int:
    """Serialised size of a model's state dict: the weights-only file size, for comparisons."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def reference_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode whose ES-SSM layers use the plain reference mixing
    (`fast=False`): plain tensor ops that torch.jit.trace records, unlike the blocked kernel."""
    model = copy.deepcopy(model).eval()
    for layer in model.modules():
        if isinstance(layer, ESSSMLayer):
            layer.settings = replace(layer.settings, fast=False)
    return model


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """A file written by `export_torchscript`, checked against its sha256 sidecar (torch.jit is
    deprecated in torch 2.x, still works)."""
    verify_checksum(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path))


def export_torchscript(
    model: nn.Module, example: Batch, path: str | Path, check: Callable[[str], Any] | None = None
) -> int:
    """Trace `model` (at its full budget) on `example` and save it atomically with a sha256
    sidecar, after `check(tmp)`; returns bytes.

    The graph is specialised to the example's shape (B, L): pad shorter inputs to L with the
    mask (the layers are causal and pooling is masked, so padding does not change the logits).
    """
    inputs = model_inputs(example)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still works
        traced = torch.jit.trace(reference_copy(model), inputs, check_trace=False)
    return atomic_write(path, traced.save, check=check, checksum=True)


def example_seq_len(config: Mapping[str, Any], requested: int | None) -> int:
    """`requested`, or the backbone's own seq_len (the longest input it was built for)."""
    built = config["backbone"].get("init_args", {}).get("seq_len")
    if requested is None and built is None:
        raise ValueError("the backbone records no seq_len: pass --seq-len")
    return requested if requested is not None else built


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.2f} MB"


def check_agreement(name: str, got: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> float:
    """max |got - expected|, or a RuntimeError naming `name` when it exceeds `tol`."""
    diff = float((got - expected).abs().max())
    if not diff <= tol:
        raise RuntimeError(f"{name} disagrees with the full model: max |diff| {diff:.3g} > {tol:g}")
    return diff


def torchscript_path(out: str | Path) -> str:
    """Where `export_checked` writes the TorchScript copy of the export `out`."""
    return str(Path(out).with_suffix(".torchscript.pt"))


def export_checked(
    full: nn.Module,
    config: Mapping[str, Any],
    budget: int,
    out: str,
    example: Batch,
    torchscript: bool = False,
) -> dict[str, Any]:
    """Write `full` (a model, with its `model_config`) truncated to `budget` to `out`, and with
    `torchscript` a traced copy to `torchscript_path(out)`; return the report.

    Each file is checked against the full model at `budget` on `example` before it is renamed
    into place, so a failed export never replaces a good file.
    """
    small, small_config = truncate(full, config, budget)
    with torch.no_grad():
        expected = batch_logits(full, example, budget)
        report = {
            "out": out, "budget": budget, "k_max": full.k_max, "full_bytes": state_bytes(full),
            "params": count_parameters(small), "full_params": count_parameters(full),
            "shape": tuple(example[next(iter(example))].shape),
        }

        def check_export(tmp: str) -> None:
            report["diff"] = check_agreement("export", batch_logits(load_exported(tmp), example), expected)

        report["bytes"] = save_exported(small, small_config, out, check=check_export)
        if torchscript:
            entry = report["torchscript"] = {"path": torchscript_path(out)}

            def check_script(tmp: str) -> None:
                got = load_torchscript(tmp)(*model_inputs(example))
                entry["diff"] = check_agreement("torchscript", got, expected)

            entry["bytes"] = export_torchscript(small, example, entry["path"], check_script)
    return report


def check_targets(paths: list[str], overwrite: bool) -> None:
    """Before any work: refuse existing output files (unless `overwrite`) and unwritable folders."""
    for path in map(Path, paths):
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} already exists: choose another --out, or pass --overwrite to replace it")
        folder = next(p for p in path.absolute().parents if p.exists())
        if not folder.is_dir():
            raise NotADirectoryError(f"cannot write {path}: {folder} is a file, not a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot write {path}: folder {folder} is not writable")


def format_export(report: dict[str, Any]) -> str:
    budget = report["budget"]
    lines = [
        f"exported budget k={budget} of k_max={report['k_max']} -> {report['out']}",
        f"  parameters: {report['full_params']:,d} -> {report['params']:,d}",
        f"  file size:  {_mb(report['full_bytes'])} (model weights at k_max) -> {_mb(report['bytes'])}"
        f"; training checkpoint {_mb(report['ckpt_bytes'])}",
        f"  max |logits - full model at k={budget}|: {report['diff']:.2e} on a synthetic {report['shape']} batch",
    ]
    if "torchscript" in report:
        script = report["torchscript"]
        lines.append(f"  torchscript: {script['path']} ({_mb(script['bytes'])}, max |diff| {script['diff']:.2e})")
    return "\n".join(lines)
