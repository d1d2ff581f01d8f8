"""Budgeted deployment: export a truncated model, pick a budget for a latency target, cascade.

Plain torch, no Lightning: an exported file loads with `load_exported` and nothing but the
model classes of this package. The command-line glue (`esssm export | plan | cascade`) lives
in esssm/commands.py.

- Export: a model trained at k_max, cut to budget k, physically holds only channels 1..k of
  every ES-SSM layer (mix[:k], gate_out rows [:k], phi[:, :k], sigma[:k]) and computes exactly
  what the full model computes at budget k. The truncated filters are the stored ones, never
  recomputed: the top-k eigenvectors of an (L, k) problem agree with those of (L, K) only up
  to numerics in the near-null space.
- Plan: join measured latency per budget with a recorded budget-accuracy curve.
- Cascade: answer at a small budget, escalate only the examples whose confidence is low.
"""

from __future__ import annotations

import copy
import csv
import importlib
import inspect
import io
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esssm.batch import DATA_FIELDS, Batch, model_inputs
from esssm.checkpoints import load_checked, save_checked
from esssm.files import atomic_write, verify_checksum
from esssm.layer import ESSSMLayer, check_budget
from esssm.model import active_parameters, build_module, build_task_model
from esssm.timing import median_latency_ms

EXPORT_FORMAT, EXPORT_VERSION = "esssm-export", 1
# Channel axis of every per-channel tensor of an ESSSMLayer's state dict.
CHANNEL_AXES = {"mix": 0, "gate_out.weight": 0, "gate_out.bias": 0, "sigma": 0, "phi": 1}


# --------------------------------------------------------------------------- model and batches


def model_config(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """What rebuilds a classifier without Lightning: the backbone spec and the data facts.

    hparams: a SequenceTask's hyperparameters (`task.hparams`) or an exported config.
    """
    config = {key: hparams.get(key) for key in DATA_FIELDS}
    config["task"] = config["task"] or "classification"
    config["lm_head_bias"] = bool(hparams.get("lm_head_bias", False))
    config["backbone"] = copy.deepcopy(dict(hparams["backbone"]))
    return config


def _accepts(spec: Mapping[str, Any], argument: str) -> bool:
    module_name, _, class_name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module_name), class_name)
    return argument in inspect.signature(cls).parameters


def build_model(config: Mapping[str, Any], init_filters: bool = True) -> nn.Module:
    """The task's plain-torch model (classifier, retrieval or LM) from `model_config`. init_filters=False skips the
    eigendecomposition where the backbone allows it (the state dict brings the filters)."""
    spec = copy.deepcopy(dict(config["backbone"]))
    if not init_filters and _accepts(spec, "init_filters"):
        spec["init_args"] = {**spec.get("init_args", {}), "init_filters": False}
    backbone = build_module(spec)
    return build_task_model(
        config["task"], backbone, config["num_classes"], config["vocab_size"], config["input_dim"],
        lm_head_bias=config.get("lm_head_bias", False),
    )


def batch_logits(model: nn.Module, batch: Batch, budget: int | None = None) -> torch.Tensor:
    """Logits (B, C) of a project batch dict at `budget` (None = the model's full k_max)."""
    return model(*model_inputs(batch), budget=budget)


def synthetic_batch(
    config: Mapping[str, Any], batch_size: int, seq_len: int, device: str | torch.device = "cpu"
) -> Batch:
    """Random inputs of the task's kind, shape (B, L) token ids or (B, L, C) features, with
    all-valid masks; two documents for retrieval. Seeded, so every call gives the same batch."""
    gen = torch.Generator().manual_seed(0)

    def document() -> torch.Tensor:
        if config["vocab_size"] is not None:
            return torch.randint(config["vocab_size"], (batch_size, seq_len), generator=gen)
        return torch.randn(batch_size, seq_len, config["input_dim"], generator=gen)

    names = [("x1", "mask1"), ("x2", "mask2")] if config["task"] == "retrieval" else [("x", "mask")]
    mask = torch.ones(batch_size, seq_len, dtype=torch.bool)
    return {key: t.to(device) for x, m in names for key, t in ((x, document()), (m, mask))}


def to_device(batch: Batch, device: str | torch.device) -> Batch:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def elastic_k_max(model: nn.Module) -> int:
    """The model's k_max; a clear error for a backbone without a spectral budget."""
    k_max = getattr(model, "k_max", None)
    if k_max is None or not any(isinstance(m, ESSSMLayer) for m in model.modules()):
        backbone = type(getattr(model, "backbone", model)).__name__
        raise ValueError(
            f"budgeted deployment needs an elastic ES-SSM backbone; {backbone} has no spectral "
            "budget (k_max), so it runs at one size only"
        )
    return k_max


# --------------------------------------------------------------------------- export


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

    model: the full classifier (for a trained task, its EMA `eval_model`); config: its
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
    return save_checked(path, payload, state, check)


def load_exported(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """The model of an exported file, in eval mode; its config is kept as `.export_config`.

    Needs no Lightning, training code or data; loads with weights_only=True (no pickled code).
    The file is checked against its sha256 sidecar; errors name it.
    """
    path = Path(path)
    payload = load_checked(path, "exported model", map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != EXPORT_FORMAT:
        raise ValueError(
            f"{path} is not an `esssm export` file (a Lightning checkpoint loads with "
            "esssm.commands.load_task)"
        )
    if payload.get("version") != EXPORT_VERSION:
        raise ValueError(f"{path} has export version {payload.get('version')}, expected {EXPORT_VERSION}")
    # Exports written before `lm_head_bias` existed record no flag; their LM heads have a bias.
    config = {"lm_head_bias": "head.bias" in payload["state_dict"], **payload["config"]}
    model = build_model(config, init_filters=False)
    model.load_state_dict(payload["state_dict"], strict=True)
    model.export_config = payload["config"]
    return model.to(map_location).eval()


def state_bytes(model: nn.Module) -> int:
    """Serialised size of a model's state dict: the weights-only file size, for comparisons."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


# --------------------------------------------------------------------------- TorchScript


def reference_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` in eval mode whose ES-SSM layers use the plain reference mixing
    (`fast=False`): plain tensor ops that torch.jit.trace records, unlike the blocked kernel."""
    model = copy.deepcopy(model).eval()
    for layer in model.modules():
        if isinstance(layer, ESSSMLayer):
            layer.fast = False
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


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class CurvePoint:
    budget: int
    acc: float
    active_params: int


@dataclass(frozen=True)
class PlanRow:
    budget: int
    acc: float
    latency_ms: float
    active_params: int
    meets: bool


def _curve_rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"budget", "acc", "active_params"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path} is not a budget curve: columns {sorted(missing)} missing (or no rows)")
    return rows


def read_curve(path: str | Path) -> list[CurvePoint]:
    """Budget-accuracy points from a BudgetSweep CSV (budget, acc, active_params, ...).

    A "full" row (a model without a budget) is skipped; a budget listed twice keeps its last row.
    A non-finite accuracy is refused with the file and line.
    """
    points = {}
    for line, r in enumerate(_curve_rows(path), start=2):
        if r["budget"].isdigit():
            acc = float(r["acc"])
            if not 0.0 <= acc <= 1.0:
                raise ValueError(f"{path}:{line}: accuracy {r['acc']!r} at budget {r['budget']} is not in [0, 1]")
            points[int(r["budget"])] = CurvePoint(int(r["budget"]), acc, int(r["active_params"]))
    return [points[k] for k in sorted(points)]


def curve_name(ckpt: str | Path, split: str) -> str:
    """The file name `esssm sweep` gives the curve of one checkpoint: <stem>.budget_curve_<split>.csv."""
    return f"{Path(ckpt).stem}.budget_curve_{split}.csv"


def curve_problem(path: str | Path, source: Mapping[str, Any]) -> str | None:
    """Why the curve at `path` was not measured on the checkpoint `source` describes (its
    global step, and its sha256 where the curve records one), or None when it was."""
    row = _curve_rows(path)[0]
    if "step" not in row:
        return f"{path} records no training step, so it cannot be matched to a checkpoint"
    if row["step"] != str(source["step"]):
        return f"{path} was measured at training step {row['step']}, the checkpoint is at step {source['step']}"
    if row.get("sha256") and row["sha256"] != source["sha256"]:
        return f"{path} was measured on another file ({row.get('checkpoint')}, sha256 {row['sha256'][:12]}...)"
    return None


def curve_for(ckpt: str | Path, source: Mapping[str, Any], curve: str | Path | None = None) -> Path:
    """The budget curve measured on this checkpoint: `curve` if given, else, beside it, the one
    `esssm sweep` wrote for it or the one training wrote at its step; validation before test
    (choosing a budget on the test split would leak it). A curve of another checkpoint is refused."""
    folder = Path(ckpt).parent
    candidates = [Path(curve)] if curve else [
        folder / name for split in ("val", "test") for name in (curve_name(ckpt, split), f"budget_curve_{split}.csv")
    ]
    problems = []
    for path in candidates:
        if path.is_file():
            problem = curve_problem(path, source)
            if problem is None:
                return path
            problems.append(problem)
    found = "; ".join(problems) if problems else f"no budget curve beside {ckpt}"
    raise FileNotFoundError(
        f"no budget curve of {ckpt} ({found}). Measure one with `esssm sweep --ckpt {ckpt} "
        f"--data-config <fit config> --split val` (it writes {folder / curve_name(ckpt, 'val')})"
    )


def time_once(fn: Callable[[], object], device: str | torch.device) -> float:
    """Milliseconds of one call of fn (CUDA-synchronised on GPUs)."""
    return median_latency_ms(fn, device, warmup=0, repeats=1)


def measure_latencies(
    model: nn.Module,
    example: Batch,
    budgets: Sequence[int],
    device: str | torch.device = "cpu",
    rounds: int = 5,
    warmup: int = 1,
    timer: Callable[[Callable[[], object], str | torch.device], float] = time_once,
) -> dict[int, float]:
    """Median milliseconds of one forward pass of `example` per budget.

    Budgets are timed in interleaved rounds (every budget once per round) after `warmup`
    untimed rounds, so a burst of load from other processes hits all budgets alike instead of
    skewing whichever budget was being timed. `timer(fn, device) -> ms` is injectable.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    model = model.to(device).eval()
    example = to_device(example, device)
    times: dict[int, list[float]] = {k: [] for k in budgets}
    with torch.inference_mode():
        for r in range(warmup + rounds):
            for k in budgets:
                ms = timer(lambda k=k: batch_logits(model, example, k), device)
                if r >= warmup:
                    times[k].append(ms)
    return {k: statistics.median(v) for k, v in times.items()}


def plan_budget(
    curve: Sequence[CurvePoint], latencies: Mapping[int, float], target_ms: float
) -> tuple[PlanRow | None, list[PlanRow]]:
    """The most accurate budget whose latency meets `target_ms` (ties: the faster one), or None,
    and the table behind the choice (budgets with both an accuracy and a latency)."""
    rows = [
        PlanRow(p.budget, p.acc, latencies[p.budget], p.active_params, latencies[p.budget] <= target_ms)
        for p in curve
        if p.budget in latencies
    ]
    feasible = [r for r in rows if r.meets]
    best = max(feasible, key=lambda r: (r.acc, -r.latency_ms)) if feasible else None
    return best, rows


def format_plan(rows: Sequence[PlanRow], best: PlanRow | None, target_ms: float) -> str:
    """The plan table, the chosen row marked, and the verdict."""
    lines = [f"{'budget':>6}  {'acc %':>7}  {'latency ms':>10}  {'active params':>13}  meets {target_ms:g} ms"]
    for r in rows:
        mark = "  <- best" if r is best else ""
        lines.append(
            f"{r.budget:>6}  {100 * r.acc:7.2f}  {r.latency_ms:10.2f}  {r.active_params:13,d}  "
            f"{'yes' if r.meets else 'no':>5}{mark}"
        )
    if best is None:
        fastest = min(rows, key=lambda r: r.latency_ms)
        lines.append(
            f"no budget meets {target_ms:g} ms: the fastest, k={fastest.budget}, takes "
            f"{fastest.latency_ms:.2f} ms here; raise the target, lower --batch/--seq-len, or use a GPU"
        )
    else:
        lines.append(
            f"best budget: k={best.budget} ({100 * best.acc:.2f}% at {best.latency_ms:.2f} ms, "
            f"{best.active_params:,d} active parameters)"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- cascade


@dataclass
class CascadeResult:
    """Per example (B,): the answering stage's logits (B, C), the budget that answered, and the
    compute spent on it over every stage it went through (channels = sum of their budgets,
    params = sum of their active parameters)."""

    logits: torch.Tensor
    budget: torch.Tensor
    channels: torch.Tensor
    params: torch.Tensor


def subset(batch: Batch, index: torch.Tensor, size: int) -> Batch:
    """Rows `index` of every (size, ...) tensor of a batch; other entries unchanged."""
    return {
        k: v[index] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == size else v
        for k, v in batch.items()
    }


def cascade_predict(
    model: nn.Module, batch: Batch, budgets: Sequence[int], threshold: float
) -> CascadeResult:
    """Anytime inference: run the smallest budget; examples whose confidence (max softmax
    probability) is below `threshold` go on to the next budget; the largest answers the rest.

    threshold 0 answers everything at the smallest budget, threshold > 1 everything at the
    largest. Later stages recompute from scratch (the gate renormalises over the active prefix,
    so no activation is shared between budgets), hence compute adds up over stages.
    """
    k_max = elastic_k_max(model)
    budgets = sorted({check_budget(k, k_max) for k in budgets})
    if not budgets:
        raise ValueError("cascade needs at least one budget")
    size = int(model_inputs(batch)[0].shape[0])
    device = model_inputs(batch)[0].device
    pending = torch.arange(size, device=device)
    answered = torch.zeros(size, dtype=torch.long, device=device)
    channels, params = torch.zeros_like(answered), torch.zeros_like(answered)
    logits = None
    for stage, k in enumerate(budgets):
        out = batch_logits(model, batch if len(pending) == size else subset(batch, pending, size), k)
        logits = out.new_empty(size, out.shape[-1]) if logits is None else logits
        last = stage == len(budgets) - 1
        confident = out.float().softmax(-1).amax(-1) >= threshold
        done = torch.ones_like(confident) if last else confident
        channels[pending] += k
        params[pending] += active_parameters(model, k)
        logits[pending[done]], answered[pending[done]] = out[done], k
        pending = pending[~done]
        if len(pending) == 0:
            break
    return CascadeResult(logits, answered, channels, params)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate_policy(
    model: nn.Module,
    batches: Iterable[Batch],
    budgets: Sequence[int],
    threshold: float,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Accuracy, mean compute per example and measured model time of one cascade policy over
    labelled batches (a single budget is the fixed-budget policy)."""
    device = torch.device(device)
    model = model.to(device).eval()
    correct = count = channels = params = 0
    seconds = 0.0
    answered: dict[int, int] = {}
    with torch.inference_mode():
        for batch in batches:
            batch = to_device(batch, device)
            _synchronize(device)
            start = time.perf_counter()
            result = cascade_predict(model, batch, budgets, threshold)
            _synchronize(device)
            seconds += time.perf_counter() - start
            correct += int((result.logits.argmax(-1) == batch["y"]).sum())
            count += len(result.budget)
            channels += int(result.channels.sum())
            params += int(result.params.sum())
            for k, n in zip(*torch.unique(result.budget, return_counts=True)):
                answered[int(k)] = answered.get(int(k), 0) + int(n)
    if count == 0:
        raise ValueError("no examples to evaluate (empty data split)")
    return {
        "acc": correct / count,
        "count": count,
        "avg_channels": channels / count,
        "avg_params": params / count,
        "ms_per_example": 1000.0 * seconds / count,
        "answered": {k: n / count for k, n in sorted(answered.items())},
    }


def warm_up(model: nn.Module, batch: Batch, budgets: Iterable[int], device: str | torch.device) -> None:
    """One untimed pass per budget: the first call pays for filter spectra and allocations."""
    model = model.to(device).eval()
    with torch.inference_mode():
        for k in budgets:
            batch_logits(model, to_device(batch, device), k)


def cascade_sweep(
    model: nn.Module,
    batches: Callable[[], Iterable[Batch]],
    budgets: Sequence[int],
    thresholds: Sequence[float],
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """The fixed-budget curve (one row per budget) followed by the cascade over `budgets` at
    every threshold; `batches()` yields a fresh pass over the labelled data each time."""
    warm_up(model, next(iter(batches())), budgets, device)
    policies = [(f"k={k}", [k], math.inf) for k in sorted(budgets)]
    cascade = ",".join(str(k) for k in sorted(budgets))
    policies += [(f"cascade {cascade} @ {t:g}", budgets, t) for t in thresholds]
    return [
        {"policy": name, "threshold": t, **evaluate_policy(model, batches(), ks, t, device)}
        for name, ks, t in policies
    ]


def format_cascade(rows: Sequence[Mapping[str, Any]]) -> str:
    """Accuracy vs mean compute per example, fixed budgets first, then the cascades."""
    lines = [
        f"{'policy':<28}  {'acc %':>7}  {'avg channels':>12}  {'avg active params':>17}  "
        f"{'ms/example':>10}  answered at (fraction)"
    ]
    for r in rows:
        answered = " ".join(f"k{k}:{f:.2f}" for k, f in r["answered"].items())
        lines.append(
            f"{r['policy']:<28}  {100 * r['acc']:7.2f}  {r['avg_channels']:12.2f}  "
            f"{r['avg_params']:17,.0f}  {r['ms_per_example']:10.3f}  {answered}"
        )
    return "\n".join(lines)
