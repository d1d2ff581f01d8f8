"""AOTInductor packages: a model at its full budget compiled ahead of time into a `.pt2` file.

`export_pt2` exports the model with torch.export (batch and length dynamic, length 1..seq_len)
and compiles it with `torch._inductor.aoti_compile_and_package` into one package holding the
compiled code (a shared library) and the weights; `load_pt2` loads it with
`torch._inductor.aoti_load_package`. Running a package needs torch but no Python model code.

The package is built from the reference mixing (`reference_copy`: plain rfft/irfft/einsum
ops): the fast layer's spectral kernel is a set of Python custom ops that a compiled package
cannot hold. Inductor generates no code for complex tensors, so the FFTs and the complex
products run as calls into ATen kernels from the package (torch warns about this at compile
time; the warning is silenced here). Public reports describe AOTInductor stride bugs with
complex ops, so every package is checked numerically against the PyTorch model before it
replaces a file. Compiling takes C++ compile time: tens of seconds per package on a CPU.
"""

from __future__ import annotations

import functools
import json
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esssm.batch import Batch, model_inputs
from esssm.files import atomic_write, verify_checksum
from esssm.infer.export import reference_copy, truncate
from esssm.infer.model import relative_error, to_device
from esssm.layer import ESSSMLayer

PT2_FORMAT, PT2_VERSION = "esssm-pt2", 1
METADATA_KEY = "esssm"  # the package metadata entry holding `package_facts` as JSON
TOLERANCE = 1e-4  # largest max|package - model| / max|model| a package may have

Inputs = tuple[torch.Tensor, ...]


class FullBudget(nn.Module):
    """`model` called with positional tensors only, at its full budget: what torch.export
    records (a budget argument would be a constant of the graph anyway)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(*inputs)


def input_names(example: Batch) -> tuple[str, ...]:
    """Names of the positional inputs, in `model_inputs` order."""
    return ("x1", "x2", "mask1", "mask2") if "x1" in example else ("x", "mask")


def max_length(model: nn.Module) -> int:
    """The longest input the model accepts: the smallest seq_len of its ES-SSM layers."""
    lengths = [m.seq_len for m in model.modules() if isinstance(m, ESSSMLayer)]
    if not lengths:
        raise ValueError(f"{type(model).__name__} has no ES-SSM layer: export_pt2 packages ES-SSM models")
    return min(lengths)


def trace_inputs(model: nn.Module, example: Batch) -> Inputs:
    """The example's positional tensors for torch.export, with a batch size or length of 1
    doubled (repeating the example): export would fix a size of 1 to a constant, and the values
    do not matter to the trace. Every input, masks included, must be given."""
    inputs = model_inputs(example)
    missing = [name for name, t in zip(input_names(example), inputs) if t is None]
    if missing:
        raise ValueError(f"export_pt2 needs every input as a tensor; the example lacks {', '.join(missing)} "
                         "(pass all-valid masks, as synthetic_batch makes)")
    seq_len = max_length(model)
    if not 1 <= inputs[0].shape[1] <= seq_len:
        raise ValueError(f"export_pt2 needs an example of length in [1, seq_len={seq_len}], got {inputs[0].shape[1]}")
    for dim in (0, 1):
        if inputs[0].shape[dim] == 1:
            inputs = tuple(torch.cat([t, t], dim) for t in inputs)
    return inputs


def package_facts(model: nn.Module, example: Batch) -> dict[str, Any]:
    """What `load_pt2` checks calls against: input names, dtypes and feature sizes, seq_len."""
    inputs = model_inputs(example)
    return {
        "format": PT2_FORMAT, "version": PT2_VERSION, "seq_len": max_length(model),
        "inputs": [
            {"name": name, "dtype": dtype_name(t), "features": list(t.shape[2:])}
            for name, t in zip(input_names(example), inputs)
        ],
    }


def compile_package(model: nn.Module, inputs: Inputs, facts: Mapping[str, Any], file: Any) -> None:
    """Export `model` (reference mixing, full budget) on `inputs` with dynamic batch and length
    1..seq_len and write its AOTInductor package, recording `facts`, to the open binary `file`."""
    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("length", min=1, max=max_length(model))
    shapes = tuple({0: batch, 1: length} for _ in inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Torchinductor does not support code generation for complex")
        program = torch.export.export(FullBudget(reference_copy(model)), inputs, dynamic_shapes=(shapes,))
        configs = {"aot_inductor.metadata": {METADATA_KEY: json.dumps(facts)}}
        torch._inductor.aoti_compile_and_package(program, package_path=file, inductor_configs=configs)


class Pt2Runner:
    """A loaded package: call it with the positional inputs (x, mask), or (x1, x2, mask1, mask2)
    for retrieval, each (B, L) token ids / masks or (B, L, C) features, 1 <= L <= seq_len;
    returns logits (B, classes), or (B, L, vocab) for the LM.

    The compiled code does not check its inputs (torch's generated checks run only with
    AOTI_RUNTIME_CHECK_INPUTS=1) and assumes dense row-major tensors: a strided view such as
    x[:, :n] gave wrong logits (relative error 1.3). So each call checks the inputs against
    the facts recorded in the package and passes them on contiguous.
    """

    def __init__(self, package: Any, facts: Mapping[str, Any], name: str) -> None:
        self.package, self.facts, self.name = package, facts, name

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        self.check_inputs(inputs)
        return self.package(*(t.contiguous() for t in inputs))

    def check_inputs(self, inputs: Sequence[torch.Tensor]) -> None:
        specs, seq_len = self.facts["inputs"], self.facts["seq_len"]
        if len(inputs) != len(specs):
            names = ", ".join(spec["name"] for spec in specs)
            raise ValueError(f"{self.name} takes {len(specs)} inputs ({names}), got {len(inputs)}")
        batch = inputs[0].shape[0] if torch.is_tensor(inputs[0]) else None
        for spec, t in zip(specs, inputs):
            shape = ", ".join(["B", "L", *map(str, spec["features"])])
            expected = f"a tensor of dtype {spec['dtype']}, shape ({shape}), B = {batch}, 1 <= L <= {seq_len}"
            got = f"dtype {dtype_name(t)}, shape {tuple(t.shape)}" if torch.is_tensor(t) else type(t).__name__
            if not torch.is_tensor(t) or (
                dtype_name(t) != spec["dtype"] or t.dim() != 2 + len(spec["features"])
                or list(t.shape[2:]) != spec["features"] or t.shape[0] != batch or not 1 <= t.shape[1] <= seq_len
            ):
                raise ValueError(f"{self.name}: input {spec['name']} must be {expected}, got {got}")


def dtype_name(t: torch.Tensor) -> str:
    """`int64` for torch.int64: how the package facts record dtypes."""
    return str(t.dtype).removeprefix("torch.")


def open_package(path: str | Path, name: str | Path) -> Pt2Runner:
    """Load the package at `path` (any file name), reporting errors and calls as `name`."""
    with open(path, "rb") as f:  # a file object: torch's loader wants a .pt2 name otherwise
        try:
            package = torch._inductor.aoti_load_package(f)
        except RuntimeError as error:
            raise RuntimeError(f"{name} is not a loadable AOTInductor package: {error}") from error
    facts = json.loads(package.get_metadata().get(METADATA_KEY, "{}"))
    if facts.get("format") != PT2_FORMAT or facts.get("version") != PT2_VERSION:
        raise ValueError(f"{name} is not an esssm .pt2 package (written by esssm.infer.pt2.export_pt2)")
    return Pt2Runner(package, facts, str(name))


def load_pt2(path: str | Path) -> Pt2Runner:
    """The package written by `export_pt2`, after checking it against its sha256 sidecar
    (a damaged or replaced file raises ChecksumError naming it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"AOTInductor package {path} does not exist")
    verify_checksum(path)
    return open_package(path, path)


def probe_inputs(example: Batch) -> list[Inputs]:
    """The example's inputs at two batch sizes (B, B + 1: the first row repeated) and two
    lengths (L, L // 2): a dynamic package must be right at sizes it was not traced with."""
    inputs = model_inputs(example)
    length = inputs[0].shape[1]
    grown = tuple(torch.cat([t, t[: 1]]) for t in inputs)
    lengths = dict.fromkeys((length, max(1, length // 2)))  # one length when L = 1
    return [tuple(t[:, :n] for t in group) for group in (inputs, grown) for n in lengths]


def check_package(
    path: str | Path, reference: Callable[..., torch.Tensor], probes: Sequence[Inputs],
    name: str | Path, tol: float = TOLERANCE,
) -> float:
    """The largest relative error max|package - reference| / max|reference| over the probe
    inputs, or a RuntimeError naming `name` when one exceeds `tol`."""
    runner = open_package(path, name)
    worst = 0.0
    with torch.no_grad():
        for inputs in probes:
            error = relative_error(runner(*inputs), reference(*inputs))
            if not error <= tol:  # NaN fails too
                raise RuntimeError(
                    f"{name}: the AOTInductor package disagrees with the PyTorch model on inputs of shape "
                    f"{tuple(inputs[0].shape)}: relative error {error:.3g} > {tol:g}; the file was not written"
                )
            worst = max(worst, error)
    return worst


def export_pt2(
    model: nn.Module, example: Batch, path: str | Path, check: Callable[[str], Any] | None = None
) -> int:
    """Compile `model` (at its full budget: a `truncate`d model for budget k) into the
    AOTInductor package `path` (.pt2) with a sha256 sidecar; returns its size in bytes.

    example: a batch of the model's inputs (length <= seq_len, masks given); the package takes
    any batch size and any length 1..seq_len.
    The written package is checked before it replaces `path`: against `model` on the example
    at two batch sizes and two lengths (`probe_inputs`, relative error <= TOLERANCE), then with
    `check(tmp)` if given (e.g. `check_package` against the full model at budget k). A failed
    check raises and leaves an earlier file at `path` untouched.
    """
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"{path}: an AOTInductor package is a .pt2 file (torch's loaders expect the suffix)")
    model = model.eval()
    inputs, facts, probes = trace_inputs(model, example), package_facts(model, example), probe_inputs(example)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            compile_package(model, inputs, facts, f)

    def check_all(tmp: str) -> None:
        check_package(tmp, model, probes, path)
        if check is not None:
            check(tmp)

    return atomic_write(path, write, check=check_all, checksum=True)


def pt2_forwards(
    model: nn.Module, config: Mapping[str, Any], example: Batch, budgets: Sequence[int], device: str | torch.device,
    advance: Callable[[], object] = lambda: None,
) -> dict[int, Callable[[], object]]:
    """One call of `example` per budget through the AOTInductor package of `model` (with its
    `model_config`) truncated to that budget, for `esssm.infer.plan.time_budgets`.

    Each budget is compiled to a checked package in a temporary folder (tens of seconds each);
    a loaded package no longer needs its file.
    """
    model = model.to(device).eval()
    example = to_device(example, device)
    inputs = tuple(t.contiguous() for t in model_inputs(example))
    forwards = {}
    with tempfile.TemporaryDirectory() as folder:
        for k in budgets:
            small, _ = truncate(model, config, k)
            path = Path(folder) / f"k{k}.pt2"
            export_pt2(small.to(device), example, path)
            forwards[k] = functools.partial(_run_package, load_pt2(path), inputs)
            advance()
    return forwards


def _run_package(runner: Pt2Runner, inputs: Inputs) -> torch.Tensor:
    with torch.inference_mode():
        return runner(*inputs)


def export_pt2_checked(
    full: nn.Module, config: Mapping[str, Any], budget: int, out: str | Path, example: Batch
) -> dict[str, Any]:
    """`full` (a model with its `model_config`) truncated to `budget`, compiled to the package
    `out`; checked against the truncated model at two batch sizes and two lengths, then against
    `full` at `budget` on the example, before it replaces `out`. Returns the report."""
    small, _ = truncate(full, config, budget)
    report: dict[str, Any] = {"out": str(out), "budget": budget, "k_max": full.k_max}

    def check_full(tmp: str) -> None:
        report["error"] = check_package(tmp, lambda *x: full(*x, budget=budget), [model_inputs(example)], out)

    report["bytes"] = export_pt2(small, example, out, check=check_full)
    return report


def format_pt2_export(report: Mapping[str, Any]) -> str:
    return (
        f"exported budget k={report['budget']} of k_max={report['k_max']} as an AOTInductor package -> "
        f"{report['out']} ({report['bytes'] / 2**20:.2f} MB)\n"
        f"  relative error against the full model at k={report['budget']}: {report['error']:.2e} "
        f"(limit {TOLERANCE:g}; also checked at two batch sizes and two lengths)"
    )
