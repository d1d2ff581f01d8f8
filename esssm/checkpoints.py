"""Checkpoint and export files that are never NaN and never read without a check (plain torch).

`read_checkpoint` and `load_checked` are the loaders: they compare the file with its sha256
sidecar and turn torch.load's errors into ones that name the file and say what is wrong, so a
damaged file is refused rather than evaluated. `save_checked` is the writer: it refuses a model
with NaN/inf weights, writes atomically (esssm.files) and records the sidecar. The CLI's
Lightning CheckpointIO (esssm.cli.AtomicCheckpointIO) goes through both.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from esssm.files import atomic_write, verify_checksum

# What torch.load raises for an empty, cut-off or foreign file (a cut zip archive can give EINVAL).
LOAD_ERRORS = (EOFError, OSError, pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, ValueError, KeyError)


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, not a checkpoint, or holds a non-finite model."""


def nonfinite_tensors(state: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold NaN or inf."""
    return [
        name for name, value in state.items()
        if torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]


def require_finite_weights(state: Mapping[str, Any], what: str) -> None:
    """Raise CheckpointError naming `what` and the first bad tensors if any weight is NaN/inf."""
    bad = nonfinite_tensors(state)
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(
            f"{what}: the model holds non-finite weights ({shown}); a diverged model is never saved "
            "or exported. Lower the learning rate or check the inputs, and resume from an earlier checkpoint"
        )


def load_checked(path: str | Path, what: str, map_location: Any = "cpu", weights_only: bool | None = False) -> Any:
    """torch.load of `path` (a `what`: "checkpoint", "exported model") after checking that it
    exists (FileNotFoundError), is not empty and matches its sha256 sidecar (CheckpointError,
    ChecksumError); every error names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes): the write that made it never finished")
    verify_checksum(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=weights_only)
    except LOAD_ERRORS as error:
        raise CheckpointError(
            f"{what} {path} is truncated or not a PyTorch file ({type(error).__name__}: {error})"
        ) from None


def read_checkpoint(path: str | Path, map_location: Any = "cpu", weights_only: bool | None = False) -> dict[str, Any]:
    """The Lightning checkpoint dict at `path`, checked as in `load_checked`."""
    checkpoint = load_checked(path, "checkpoint", map_location, weights_only)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path} is a PyTorch file but not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def save_checked(
    path: str | Path, payload: Mapping[str, Any], state: Mapping[str, Any], check: Callable[[str], Any] | None = None
) -> int:
    """torch.save `payload` to `path` atomically with a sha256 sidecar, refusing a non-finite
    `state` first and running `check(tmp)` before the rename. Returns the size in bytes."""
    require_finite_weights(state, f"refusing to write {path}")
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), check=check, checksum=True)
