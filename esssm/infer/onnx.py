"""ONNX export: a truncated model as one ONNX file, run in onnxruntime and checked against PyTorch.

torch.onnx's exporter (torch.export underneath) handles complex tensors in few ops, and
onnxruntime runs its DFT op several times slower than matrix products of the same job
(docs/benchmarks.md). So the graph mixes channels with `OnnxMixer`, the reference formula of
each ES-SSM layer written for the exporter: the causal convolutions by `MatmulConvolution` (a
two-stage DFT as real matmuls, esssm/infer/dft.py) at one power-of-two FFT size
n >= 2 seq_len - 1 per layer, so its matrices and the filter spectra are constants and every
length 1..seq_len convolves without wrap-around; then one GEMM over the k*D convolutions. Only
slicing and padding depend on the length, so batch size and length are dynamic.

The file holds the model at its full budget (export a `truncate`d model), or with elastic=True at
every budget, k then an int64 scalar input `budget` (the layers slice their first k channels at
run time, so the cost follows k). Inputs are named as the batch keys (x, mask; retrieval x1,
mask1, x2, mask2), the output `logits`; the model config is in the metadata. onnx, onnxscript and onnxruntime are the optional `deploy` extra, imported on use.
"""

from __future__ import annotations

import copy
import importlib
import json
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from esssm.batch import Batch
from esssm.checkpoints import require_finite_weights
from esssm.files import atomic_write, verify_checksum
from esssm.infer.dft import MatmulConvolution
from esssm.infer.export import truncate
from esssm.infer.model import batch_logits, relative_error, synthetic_batch
from esssm.layer import ESSSMLayer, check_budget
from esssm.objectives import get_objective

# Largest relative error (max |onnx - torch| / max |torch|) an export may show on its check batches.
RELATIVE_TOLERANCE = 1e-4
OUTPUT_NAME = "logits"
CONFIG_KEY = "esssm.config"  # metadata entry holding the model config (JSON)
BUDGET_INPUT = "budget"  # the elastic file's budget k, an int64 scalar
ONNX_FILE_LIMIT = 2**31  # protobuf's limit on one serialised ONNX model, in bytes


def _require(module: str) -> ModuleType:
    """Import an optional dependency, or say which extra provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"ONNX export needs {module}: pip install 'esssm[deploy]' ({error})") from None


def power_of_two_fft_size(seq_len: int) -> int:
    """Smallest power of two >= max(4, 2 seq_len - 1): linear convolutions of any length <= seq_len."""
    return max(4, 1 << (2 * seq_len - 2).bit_length())


class OnnxMixer(nn.Module):
    """An ESSSMLayer's forward as the exporter and onnxruntime handle it, (B, L, D) -> (B, L, D):
    the same function at every budget, from the layer's own parameters and filters."""

    def __init__(self, layer: ESSSMLayer) -> None:
        super().__init__()
        self.layer = layer
        self.convolve = MatmulConvolution(layer.phi, power_of_two_fft_size(layer.seq_len))

    def forward(self, u: torch.Tensor, mask: torch.Tensor | None = None, budget: int | None = None) -> torch.Tensor:
        layer = self.layer
        k = check_budget(budget, layer.k_max)
        weights = layer.mixing_weights(u, k).transpose(1, 2).unsqueeze(2)  # (B, k, 1, L)
        weighted = (self.convolve(u, k) * weights).flatten(1, 2)  # (B, k*D, L)
        return layer.skip(u) + weighted.transpose(1, 2) @ layer.mix[:k].flatten(0, 1)  # (B, L, k*D) @ (k*D, D)


def onnx_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode whose ES-SSM layers run as `OnnxMixer`s."""
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, ESSSMLayer):
                setattr(parent, name, OnnxMixer(child))
    return model


def input_names(config: Mapping[str, Any]) -> tuple[str, ...]:
    """The graph inputs: the batch keys of the objective's model."""
    return get_objective(config["objective"]).inputs


class _NamedInputs(nn.Module):
    """`model` called with the batch keys as positional inputs, in `input_names` order, then
    with `elastic` the budget as a 0-d integer tensor (traced as a SymInt: sizes follow it)."""

    def __init__(self, model: nn.Module, names: Sequence[str], elastic: bool) -> None:
        super().__init__()
        self.model, self.names, self.elastic = model, tuple(names), elastic

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        budget = inputs[-1].item() if self.elastic else None
        return batch_logits(self.model, dict(zip(self.names, inputs)), budget)


def _dynamic_shapes(names: Sequence[str], seq_len: int) -> tuple[dict[int, Any], ...]:
    """Per input: batch size shared by all; length 1..seq_len per document (x1/mask1, x2/mask2)."""
    batch = torch.export.Dim("batch")
    lengths = {suffix: torch.export.Dim(f"length{suffix}", min=1, max=seq_len) for suffix in ("", "1", "2")}
    return tuple({0: batch, 1: lengths[name[-1] if name[-1].isdigit() else ""]} for name in names)


def _write_graph(model: nn.Module, config: Mapping[str, Any], path: str, elastic: bool) -> None:
    """Export `model` (at its full budget, or with `elastic` at the budget input) to `path` as
    one self-contained ONNX file."""
    _require("onnxscript")
    seq_len = config["backbone"]["init_args"]["seq_len"]
    names = input_names(config)
    example = synthetic_batch(config, 2, seq_len)  # batch > 1: a size-1 example would fix the dimension
    # The second document one step shorter: torch.export gives equal example sizes one symbol.
    inputs = tuple(example[name][:, : seq_len - 1 if name.endswith("2") else seq_len] for name in names)
    shapes = _dynamic_shapes(names, seq_len)
    if elastic:
        names, inputs, shapes = (*names, BUDGET_INPUT), (*inputs, torch.tensor(model.k_max)), (*shapes, None)
    graph = _NamedInputs(onnx_copy(model), names, elastic).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "# The axis name", UserWarning)  # shared axes (batch) keep one name
        program = torch.onnx.export(
            graph, inputs, dynamo=True, input_names=list(names), output_names=[OUTPUT_NAME],
            dynamic_shapes=(shapes,), verbose=False,
        )
    program.model.metadata_props[CONFIG_KEY] = json.dumps(config)
    program.save(path, external_data=False)


def export_onnx(
    model: nn.Module, config: Mapping[str, Any], path: str | Path, check: Callable[[str], Any] | None = None,
    elastic: bool = False,
) -> int:
    """Write `model` (a `truncate`d model and its config; with `elastic` any model, serving every
    budget) to `path` as ONNX, atomically with a sha256 sidecar, after `check(tmp)`; returns the
    size in bytes. Non-finite weights are
    refused, and so are models beyond one file's 2 GB protobuf limit (the exporter would move
    their weights to a second file, outside the atomic write and the checksum)."""
    state = model.state_dict()
    require_finite_weights(state, f"refusing to write {path}")
    weight_bytes = sum(t.numel() * t.element_size() for t in state.values())
    if weight_bytes >= ONNX_FILE_LIMIT:
        raise ValueError(
            f"refusing to write {path}: {weight_bytes / 2**30:.2f} GiB of weights do not fit in one ONNX file "
            f"(limit 2 GB); export a smaller budget, or use --format torch"
        )
    return atomic_write(path, lambda tmp: _write_graph(model, config, tmp, elastic), check=check, checksum=True)


class OnnxModel:
    """An exported ONNX file in an onnxruntime session: `model(batch, budget)` -> logits as numpy.

    batch: the project's batch dict (torch tensors or numpy arrays; extra keys such as y are
    ignored). Inputs longer than the seq_len the filters were built for are refused. budget:
    for an elastic file any k in [1, k_max] (None: k_max); a single-budget file takes None only.
    """

    def __init__(self, session: Any, path: Path) -> None:
        self.session, self.path = session, path
        self.config = json.loads(session.get_modelmeta().custom_metadata_map[CONFIG_KEY])
        self.names = tuple(i.name for i in session.get_inputs() if i.name != BUDGET_INPUT)
        self.elastic = len(self.names) < len(session.get_inputs())
        self.seq_len = self.config["backbone"]["init_args"]["seq_len"]
        self.k_max = self.config["backbone"]["init_args"]["k_max"]

    def feeds(self, batch: Batch, budget: int | None = None) -> dict[str, np.ndarray]:
        """The session's input arrays of `batch` (and the budget), checked for missing keys,
        lengths and the budget."""
        missing = [name for name in self.names if name not in batch]
        if missing:
            raise ValueError(f"{self.path} needs inputs {list(self.names)}; the batch lacks {missing}")
        feeds = {name: np.asarray(batch[name]) for name in self.names}
        too_long = {name: a.shape[1] for name, a in feeds.items() if a.ndim < 2 or a.shape[1] > self.seq_len}
        if too_long:
            raise ValueError(
                f"{self.path} takes inputs (batch, length <= seq_len={self.seq_len}), got lengths {too_long}"
            )
        if self.elastic:
            try:
                feeds[BUDGET_INPUT] = np.array(check_budget(budget, self.k_max), dtype=np.int64)
            except ValueError as error:
                raise ValueError(f"{self.path}: {error}") from None
        elif budget is not None:
            raise ValueError(
                f"{self.path} holds one budget (k={self.k_max}), got budget={budget!r}: "
                "pass none, or export every budget with `esssm export --format onnx --elastic`"
            )
        return feeds

    def __call__(self, batch: Batch, budget: int | None = None) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], self.feeds(batch, budget))[0]


def load_onnx(path: str | Path, threads: int | None = None) -> OnnxModel:
    """An ONNX file written by `export_onnx` in an onnxruntime CPU session (threads: intra-op
    threads, None = onnxruntime's default). The file is checked against its sha256 sidecar
    first, and every error names it."""
    ort = _require("onnxruntime")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    verify_checksum(path)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types for unreadable files
        raise ValueError(f"{path} is not a loadable ONNX model ({type(error).__name__}: {error})") from None
    if CONFIG_KEY not in session.get_modelmeta().custom_metadata_map:
        raise ValueError(f"{path} is an ONNX model but not an `esssm export --format onnx` file (no {CONFIG_KEY})")
    return OnnxModel(session, path)


def check_batches(config: Mapping[str, Any], batch: int, seq_len: int) -> list[Batch]:
    """Synthetic batches at two batch sizes (batch, batch + 1) and two lengths (seq_len and about half)."""
    return [synthetic_batch(config, b, n) for b in (batch, batch + 1) for n in sorted({seq_len, seq_len // 2 + 1})]


def export_onnx_checked(
    full: nn.Module, config: Mapping[str, Any], budget: int | None, out: str, batch: int, seq_len: int
) -> dict[str, Any]:
    """Write `full` truncated to `budget` to `out` as ONNX, or with budget=None the whole model
    serving every budget (elastic); return the report.

    Before the file replaces anything it runs in onnxruntime on `check_batches` (elastic: at
    budgets 1, 2 and k_max) and is compared with `full` at the same budget in PyTorch; a relative
    error above RELATIVE_TOLERANCE refuses it.
    """
    if budget is None:
        model, model_config, budgets = full, config, sorted({1, min(2, full.k_max), full.k_max})
    else:
        (model, model_config), budgets = truncate(full, config, budget), [budget]
    examples = check_batches(config, batch, seq_len)
    first = input_names(config)[0]
    with torch.no_grad():
        expected = {(k, *e[first].shape[:2]): (e, batch_logits(full, e, k)) for k in budgets for e in examples}
    report: dict[str, Any] = {"out": out, "budget": budget, "k_max": full.k_max}

    def check(tmp: str) -> None:
        session = load_onnx(tmp)
        report["errors"] = {
            key: relative_error(session(e, None if budget else key[0]), x) for key, (e, x) in expected.items()
        }
        worst = max(report["errors"].values())
        if not worst <= RELATIVE_TOLERANCE:
            raise RuntimeError(
                f"ONNX export refused: onnxruntime disagrees with PyTorch (relative error {worst:.3g} > "
                f"{RELATIVE_TOLERANCE:g}; {format_errors(report['errors'])}); {out} was not written"
            )

    report["bytes"] = export_onnx(model, model_config, out, check, elastic=budget is None)
    return report


def format_errors(errors: Mapping[tuple[int, int, int], float]) -> str:
    return ", ".join(f"k={k} B={b} L={n}: {e:.2e}" for (k, b, n), e in errors.items())


def format_onnx_export(report: Mapping[str, Any]) -> str:
    what = f"budget k={report['budget']}" if report["budget"] else "every budget (input `budget`)"
    return "\n".join([
        f"exported {what} of k_max={report['k_max']} as ONNX -> {report['out']} ({report['bytes'] / 2**20:.2f} MB)",
        f"  relative error, onnxruntime vs PyTorch: {format_errors(report['errors'])} (limit {RELATIVE_TOLERANCE:g})",
    ])


def onnx_forwards(
    model: nn.Module, config: Mapping[str, Any], example: Batch, budgets: Sequence[int], device: str | torch.device,
    advance: Callable[[], object] = lambda: None,
) -> dict[int, Callable[[], object]]:
    """One onnxruntime call of `example` per budget (for `time_budgets`): each budget is
    exported to a temporary ONNX file and loaded in its own session, with torch's thread count."""
    if torch.device(device).type != "cpu":
        raise ValueError(f"the onnxruntime runtime runs on the CPU; got device {device!r} (use --device cpu)")
    forwards = {}
    with tempfile.TemporaryDirectory() as folder:
        for k in budgets:
            path = Path(folder) / f"k{check_budget(k, model.k_max)}.onnx"
            export_onnx(*truncate(model, config, k), path)
            forwards[k] = _bound_call(load_onnx(path, threads=torch.get_num_threads()), example)
            advance()
    return forwards


def _bound_call(model: OnnxModel, batch: Batch) -> Callable[[], object]:
    """model(batch) with the input arrays prepared once, so a timed call is the session run alone."""
    feeds = model.feeds(batch)
    return lambda: model.session.run([OUTPUT_NAME], feeds)
