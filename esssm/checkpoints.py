"""Checkpoint and export files that are never NaN and never read without a check (plain torch).

`read_checkpoint` and `load_checked` are the loaders: they compare the file with its sha256
sidecar and turn torch.load's errors into ones that name the file and say what is wrong, so a
damaged file is refused rather than evaluated. They load weights only (tensors and plain
containers): unpickling anything else can run code from the file, so a file that needs it is
refused unless the caller passes weights_only=False for a file the user said they trust.
`save_checked` is the writer: it refuses a model with NaN/inf weights, writes atomically
(esssm.files) and records the sidecar. The CLI's Lightning CheckpointIO
(esssm.train.cli.AtomicCheckpointIO) goes through both.
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
LOAD_ERRORS = (
    EOFError, OSError, pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, ValueError, KeyError, IndexError
)
# How torch.load(weights_only=True) starts the error for a pickle that names other globals.
WEIGHTS_ONLY_REFUSAL = "Weights only load failed"
# The last sentence of UnsafeCheckpointError for the esssm tools: how a trusted file is loaded.
TRUST_HINT = "If it comes from an older or foreign tool and you trust its source, pass --trust-checkpoint."


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged, not a checkpoint, or holds a non-finite model."""


class UnsafeCheckpointError(CheckpointError):
    """A file whose pickle names code (functions, classes) beyond tensors and plain containers:
    loading it in full would run that code, so it is refused unless the user trusts the file."""


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


def load_checked(
    path: str | Path,
    what: str,
    map_location: Any = "cpu",
    weights_only: bool | None = True,
    trust_hint: str = TRUST_HINT,
) -> Any:
    """torch.load of `path` (a `what`: "checkpoint", "exported model") after checking that it
    exists (FileNotFoundError), is not empty and matches its sha256 sidecar (CheckpointError,
    ChecksumError); every error names the file.

    Unless weights_only is False, only tensors and plain containers are unpickled; a file that
    needs more raises UnsafeCheckpointError ending with `trust_hint` (how the user can load it
    in full, weights_only=False, which runs whatever code the file names).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{what} {path} is empty (0 bytes): the write that made it never finished")
    verify_checksum(path)
    safe = weights_only is not False  # None (Lightning's "not set") never means a full unpickle
    try:
        return torch.load(path, map_location=map_location, weights_only=safe)
    except pickle.UnpicklingError as error:
        if safe and str(error).startswith(WEIGHTS_ONLY_REFUSAL):
            raise unsafe_checkpoint_error(path, what, trust_hint) from None
        raise _damaged(path, what, error) from None
    except LOAD_ERRORS as error:
        raise _damaged(path, what, error) from None


def unsafe_checkpoint_error(path: Path, what: str, trust_hint: str) -> UnsafeCheckpointError:
    """The refusal of a file that only a full unpickle can load: names the file, the code it
    names (where torch can list it), then says how to load it anyway (`trust_hint`)."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except LOAD_ERRORS:  # the older, non-zip format cannot be listed
        names = []
    named = f" ({', '.join(names)})" if names else ""
    return UnsafeCheckpointError(
        f"{what} {path} holds pickled objects beyond tensors and plain containers{named}; loading it "
        f"would run code from the file, so it is refused. Files written by this project never need that. {trust_hint}"
    )


def _damaged(path: Path, what: str, error: Exception) -> CheckpointError:
    return CheckpointError(f"{what} {path} is truncated or not a PyTorch file ({type(error).__name__}: {error})")


def read_checkpoint(
    path: str | Path, map_location: Any = "cpu", weights_only: bool | None = True, trust_hint: str = TRUST_HINT
) -> dict[str, Any]:
    """The Lightning checkpoint dict at `path`, checked and loaded as in `load_checked`."""
    checkpoint = load_checked(path, "checkpoint", map_location, weights_only, trust_hint)
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
