"""Plan: the most accurate budget whose measured latency meets a target, from a recorded
budget-accuracy curve of the same checkpoint."""

from __future__ import annotations

import csv
import functools
import io
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esssm.batch import Batch
from esssm.infer.model import batch_logits, to_device
from esssm.infer.onnx import onnx_forwards
from esssm.infer.pt2 import pt2_forwards
from esssm.timing import interleaved_ms, time_once


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


CURVE_COLUMNS = ("budget", "acc", "active_params")


def _curve_rows(path: str | Path) -> list[tuple[int, dict[str, str]]]:
    """(line, column -> text) per row of a budget-curve CSV, every row as wide as its header.

    A file that cannot be one (missing, a folder, not UTF-8 text, no header or no rows, a
    column missing, a row with more or fewer fields) is refused naming the file (and line).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not a budget curve: byte {error.start} is not UTF-8 text") from None
    except OSError as error:  # OSError(errno, ...) keeps the type: FileNotFoundError, IsADirectoryError
        raise OSError(error.errno, f"cannot read the budget curve {path}: {error.strerror}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as error:
        raise ValueError(f"{path}:{reader.line_num}: not a CSV row ({error})") from None
    if reader.fieldnames is None or not rows:
        state = "is empty" if reader.fieldnames is None else "has a header but no rows"
        expected = f"a header ({', '.join(CURVE_COLUMNS)}, ...) and a row per budget"
        raise ValueError(f"{path} {state}: a budget curve has {expected}")
    missing = [column for column in CURVE_COLUMNS if column not in reader.fieldnames]
    if missing:
        raise ValueError(
            f"{path}:1: not a budget curve: the header lacks {', '.join(missing)} "
            f"(expected {', '.join(CURVE_COLUMNS)}, as `esssm sweep` writes)"
        )
    for line, row in rows:
        if None in row or None in row.values():  # how csv marks extra and missing fields
            more = "more" if None in row else "fewer"
            raise ValueError(f"{path}:{line}: {more} fields than the header's {len(reader.fieldnames)}")
    return rows


def _whole_number(text: str, least: int, what: str, where: str) -> int:
    """`text` as an int >= least; ASCII digits only ("²".isdigit() is True, but int() refuses it)."""
    if not (text.isascii() and text.isdigit()) or int(text) < least:
        raise ValueError(f"{where}: {what} {text!r} is not a whole number >= {least}")
    return int(text)


def _curve_point(row: dict[str, str], where: str) -> CurvePoint:
    budget = _whole_number(row["budget"], 1, "budget", where)
    try:
        acc = float(row["acc"])
    except ValueError:
        acc = math.nan
    if not 0.0 <= acc <= 1.0:  # NaN fails this too
        raise ValueError(f"{where}: accuracy {row['acc']!r} at budget {budget} is not a number in [0, 1]")
    return CurvePoint(budget, acc, _whole_number(row["active_params"], 0, "active_params", where))


def read_curve(path: str | Path) -> list[CurvePoint]:
    """Budget-accuracy points from a BudgetSweep CSV (budget, acc, active_params, ...).

    A "full" row (a model without a budget) is skipped; a budget listed twice keeps its last row.
    A budget that is not a whole number >= 1, an accuracy outside [0, 1] (or NaN) and an
    active_params that is not a whole number are refused with the file and line.
    """
    points = {}
    for line, row in _curve_rows(path):
        if row["budget"] != "full":
            point = _curve_point(row, f"{path}:{line}")
            points[point.budget] = point
    return [points[k] for k in sorted(points)]


def curve_name(ckpt: str | Path, split: str) -> str:
    """The file name `esssm sweep` gives the curve of one checkpoint: <stem>.budget_curve_<split>.csv."""
    return f"{Path(ckpt).stem}.budget_curve_{split}.csv"


def curve_problem(path: str | Path, source: Mapping[str, Any]) -> str | None:
    """Why the curve at `path` was not measured on the checkpoint `source` describes (its
    global step, and its sha256 where the curve records one), or None when it was."""
    _, row = _curve_rows(path)[0]
    if "step" not in row:
        return f"{path} records no training step, so it cannot be matched to a checkpoint"
    if row["step"] != str(source["step"]):
        return f"{path} was measured at training step {row['step']}, the checkpoint is at step {source['step']}"
    if row.get("sha256") and row["sha256"] != source["sha256"]:
        return f"{path} was measured on another file ({row.get('checkpoint')}, sha256 {row['sha256'][:12]}...)"
    return None


def curve_for(ckpt: str | Path, source: Mapping[str, Any], curve: str | Path | None = None) -> Path:
    """The validation budget curve measured on this checkpoint: `curve` if given, else, beside it,
    the one `esssm sweep --split val` wrote for it or the one training wrote at its step. A test
    curve is never used (choosing a budget on the test split would leak it), nor a curve of
    another checkpoint; without a validation curve the error says how to measure one."""
    folder = Path(ckpt).parent
    measure = (f"Measure one with `esssm sweep --ckpt {ckpt} --data-config <fit config> --split val` "
               f"(it writes {folder / curve_name(ckpt, 'val')})")
    if curve and Path(curve).name.endswith("_test.csv"):
        raise ValueError(f"--curve {curve} is a test-split curve; planning on the test split would leak it. {measure}")
    candidates = [Path(curve)] if curve else [folder / curve_name(ckpt, "val"), folder / "budget_curve_val.csv"]
    problems = []
    for path in candidates:
        if curve or path.is_file():  # a curve asked for by name must be readable
            problem = curve_problem(path, source)
            if problem is None:
                return path
            problems.append(problem)
    found = "; ".join(problems) if problems else f"no validation curve beside {ckpt}"
    raise FileNotFoundError(f"no validation budget curve of {ckpt} ({found}). {measure}")


Forward = Callable[[], object]
# A runtime: (model, config, example, budgets, device, advance) -> one call running `example` per
# budget; advance() is called as each budget is ready (exported, compiled or loaded).
Runtime = Callable[..., dict[int, Forward]]


def torch_forwards(
    model: nn.Module, config: Mapping[str, Any], example: Batch, budgets: Sequence[int], device: str | torch.device,
    advance: Callable[[], object] = lambda: None,
) -> dict[int, Forward]:
    """The PyTorch model itself at each budget on `device` (inference mode; nothing to prepare)."""
    model = model.to(device).eval()
    example = to_device(example, device)

    def forward(budget: int) -> torch.Tensor:
        with torch.inference_mode():
            return batch_logits(model, example, budget)

    forwards = {k: functools.partial(forward, k) for k in budgets}
    for _ in forwards:
        advance()
    return forwards


def compiled_forwards(
    model: nn.Module, config: Mapping[str, Any], example: Batch, budgets: Sequence[int], device: str | torch.device,
    advance: Callable[[], object] = lambda: None,
) -> dict[int, Forward]:
    """The model through torch.compile (Inductor) at each budget, compiled here by one call per
    budget (the first two budgets compile; every later one shares the dynamic graph), so timing
    rounds see compiled code only."""
    forwards = torch_forwards(torch.compile(model.to(device).eval()), config, example, budgets, device)
    for forward in forwards.values():
        forward()
        advance()
    return forwards


# What `esssm plan --runtime` times: each entry builds the per-budget calls of one runtime.
RUNTIMES: dict[str, Runtime] = {
    "torch": torch_forwards, "compile": compiled_forwards, "onnxruntime": onnx_forwards, "pt2": pt2_forwards,
}


def budget_forwards(
    runtime: str, model: nn.Module, config: Mapping[str, Any], example: Batch, budgets: Sequence[int],
    device: str | torch.device = "cpu", advance: Callable[[], object] = lambda: None,
) -> dict[int, Forward]:
    """One call running `example` at each budget in `runtime` (a key of RUNTIMES); advance() is
    called as each budget is ready (ONNX and AOTInductor export and compile each one first)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {sorted(RUNTIMES)}, got {runtime!r}")
    return RUNTIMES[runtime](model, config, example, budgets, device, advance=advance)


def time_budgets(
    forwards: Mapping[int, Forward],
    device: str | torch.device = "cpu",
    rounds: int = 5,
    warmup: int = 1,
    timer: Callable[[Forward, str | torch.device], float] = time_once,
    advance: Callable[[], object] | None = None,
) -> dict[int, float]:
    """Median milliseconds of each budget's call (from `budget_forwards`), {k: ms}, timed in
    interleaved rounds after `warmup` untimed rounds (`esssm.timing.interleaved_ms`).
    `timer(fn, device) -> ms` is injectable; `advance()` is called after each round."""
    times = interleaved_ms(forwards, device, rounds, warmup, timer, advance)
    return {k: statistics.median(v) for k, v in times.items()}


def measure_latencies(
    model: nn.Module,
    example: Batch,
    budgets: Sequence[int],
    device: str | torch.device = "cpu",
    rounds: int = 5,
    warmup: int = 1,
    timer: Callable[[Forward, str | torch.device], float] = time_once,
) -> dict[int, float]:
    """Median milliseconds of one PyTorch forward pass of `example` per budget (`time_budgets`
    of `torch_forwards`)."""
    return time_budgets(torch_forwards(model, {}, example, budgets, device), device, rounds, warmup, timer)


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
