"""`esssm` tools that work on a trained checkpoint: sweep, export, plan, cascade, generate."""

from __future__ import annotations

import argparse
import io
import math
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import Logger

from esssm import deploy
from esssm.batch import model_inputs
from esssm.budget import sweep_budgets
from esssm.callbacks import BudgetSweep, write_curve
from esssm.checkpoints import read_checkpoint, require_finite_weights
from esssm.files import atomic_write_bytes, file_sha256
from esssm.lit import SequenceTask, upgrade_hparams
from esssm.model import count_parameters


def load_task(ckpt: str | Path, map_location: str = "cpu") -> SequenceTask:
    """The trained task from a checkpoint; the backbone is rebuilt from its stored spec.

    The file is checked first (sha256 sidecar, truncation; errors name it). `task.source`
    records which file it came from: checkpoint name, sha256, epoch and global step.
    Checkpoints written before the `budget` setting existed are upgraded in memory first.
    """
    path = Path(ckpt)
    checkpoint = read_checkpoint(path, map_location)
    source: Path | io.BytesIO = path
    if upgrade_hparams(checkpoint.get("hyper_parameters", {})):
        source = io.BytesIO()
        torch.save(checkpoint, source)
        source.seek(0)
    task = SequenceTask.load_from_checkpoint(source, map_location=map_location, weights_only=False)
    task.source = {
        "checkpoint": path.name, "sha256": file_sha256(path),
        "epoch": checkpoint.get("epoch"), "step": checkpoint.get("global_step"),
    }
    return task


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


def run_sweep(
    task: SequenceTask,
    datamodule: L.LightningDataModule,
    budgets: list[int] | str | None = None,
    split: str = "test",
    accelerator: str = "auto",
    output_dir: str | Path | None = None,
    logger: Logger | bool = False,
) -> list[dict[str, Any]]:
    """Evaluate a trained task (from `load_task`) at every budget on one split; rows of budget,
    acc, loss, params. Raises FloatingPointError on a non-finite loss.

    With `output_dir`, the curve goes to `output_dir/<checkpoint stem>.budget_curve_{split}.csv`
    with the checkpoint's name, sha256, epoch and step on every row (so it never replaces the
    curve training wrote, and `esssm plan` can tell which checkpoint it belongs to). With a
    TensorBoard `logger` the sweep is logged into that run too (the test curve as a series over k).
    """
    sweep = BudgetSweep(val_budgets=budgets, test_budgets=budgets, every_n_epochs=1, curve_file=None)
    trainer = L.Trainer(
        default_root_dir=output_dir,
        accelerator=accelerator,
        devices=1,
        logger=logger,
        callbacks=[sweep],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    run = trainer.test if split == "test" else trainer.validate
    run(task, datamodule=datamodule, verbose=False)
    rows = sweep.last_results["test" if split == "test" else "val"]
    if output_dir is not None:
        path = Path(output_dir) / deploy.curve_name(task.source["checkpoint"], split)
        write_curve(path, rows, **task.source)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width budget table: budget, accuracy (%), loss, active parameters, examples."""
    lines = [f"{'budget':>6}  {'acc %':>7}  {'loss':>7}  {'active params':>13}  {'examples':>8}"]
    lines += [
        f"{r['budget']!s:>6}  {100 * r['acc']:7.2f}  {r['loss']:7.4f}  {r['active_params']:13,d}  {r['count']:8d}"
        for r in rows
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- argument types
# argparse calls these on the raw text, so a bad value is reported with the option's name
# ("argument --batch: ...") before any data or model is loaded.


def _int_at_least(text: str, low: int, kind: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "positive")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "non-negative")


def _float_above(text: str, low: float, inclusive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and (value >= low if inclusive else value > low)):
        raise argparse.ArgumentTypeError(f"expected a finite number {'>=' if inclusive else '>'} {low:g}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    return _float_above(text, 0.0, inclusive=False)


def non_negative_float(text: str) -> float:
    return _float_above(text, 0.0, inclusive=True)


def budget_list(text: str) -> list[int] | str:
    """'all' or comma-separated positive budgets, e.g. '2,4,8'."""
    if text == "all":
        return text
    return [positive_int(k) for k in text.split(",")]


def threshold_list(text: str) -> list[float]:
    """Comma-separated finite confidences, e.g. '0.5,0.9'."""
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must be finite, got {text!r}")
    return values


def check_budgets(task: SequenceTask, budgets: list[int] | str | None, ckpt: str) -> None:
    """Budgets outside 1..k_max of the checkpoint are refused before any data is read."""
    try:
        sweep_budgets(task.k_max, budgets)
    except ValueError as error:
        raise ValueError(f"--budgets: {error} of {ckpt}") from None


def sweep_main(argv: list[str]) -> int:
    """Budget table (accuracy, loss, active parameters per budget) of a trained checkpoint."""
    parser = argparse.ArgumentParser(prog="esssm sweep", description="Budget table of a trained checkpoint.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `lightning fit`")
    parser.add_argument("--data-config", required=True, help="YAML with a data: section (e.g. the fit config)")
    parser.add_argument("--data-dir", help="override data.init_args.data_dir")
    parser.add_argument("--batch-size", type=positive_int, help="override the evaluation batch size")
    parser.add_argument("--budgets", type=budget_list, help="comma-separated budgets, 'all', or omit for the paper grid")
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args(argv)
    overrides = {"data_dir": args.data_dir, "eval_batch_size": args.batch_size}
    datamodule = load_datamodule(args.data_config, {k: v for k, v in overrides.items() if v is not None})
    task = load_task(args.ckpt)
    check_budgets(task, args.budgets, args.ckpt)  # before the data is read (at setup)
    rows = run_sweep(task, datamodule, args.budgets, args.split, args.accelerator, output_dir=Path(args.ckpt).parent)
    print(format_table(rows))
    print(f"curve: {Path(args.ckpt).parent / deploy.curve_name(args.ckpt, args.split)}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- deployment


def _deploy_source(ckpt: str) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The evaluation weights (EMA when enabled) of a checkpoint, their `model_config` and the
    checkpoint's `source` record; a model with NaN/inf weights is refused."""
    task = load_task(ckpt)
    require_finite_weights(task.eval_model.state_dict(), f"checkpoint {ckpt}")
    return task.eval_model.eval(), deploy.model_config(task.hparams), task.source


def _seq_len(config: dict[str, Any], requested: int | None) -> int:
    """--seq-len, or the backbone's own seq_len (the longest input it was built for)."""
    built = config["backbone"].get("init_args", {}).get("seq_len")
    if requested is None and built is None:
        raise ValueError("the backbone records no seq_len: pass --seq-len")
    return requested if requested is not None else built


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:.2f} MB"


def _check_agreement(name: str, got: Any, expected: Any, tol: float = 1e-5) -> float:
    diff = float((got - expected).abs().max())
    if not diff <= tol:
        raise RuntimeError(f"{name} disagrees with the full model: max |diff| {diff:.3g} > {tol:g}")
    return diff


def export_model(
    ckpt: str,
    budget: int,
    out: str,
    batch: int = 1,
    seq_len: int | None = None,
    torchscript: bool = False,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the model of `ckpt` truncated to `budget` to `out` (plus an optional TorchScript
    file beside it), check each against the full model at `budget`, return the report.

    Existing targets are refused unless `overwrite`; each file is checked (finite weights,
    agreement with the full model) before it is renamed into place, so a failed export never
    replaces a good file.
    """
    script_path = str(Path(out).with_suffix(".torchscript.pt"))
    check_targets([out, *([script_path] if torchscript else [])], overwrite)
    full, config, _ = _deploy_source(ckpt)
    small, small_config = deploy.truncate(full, config, budget)
    example = deploy.synthetic_batch(config, batch, _seq_len(config, seq_len))
    with torch.no_grad():
        expected = deploy.batch_logits(full, example, budget)
        report = {
            "out": out, "budget": budget, "k_max": full.k_max,
            "full_bytes": deploy.state_bytes(full), "ckpt_bytes": Path(ckpt).stat().st_size,
            "params": count_parameters(small), "full_params": count_parameters(full),
            "shape": tuple(example[next(iter(example))].shape),
        }

        def check_export(tmp: str) -> None:
            got = deploy.batch_logits(deploy.load_exported(tmp), example)
            report["diff"] = _check_agreement("export", got, expected)

        report["bytes"] = deploy.save_exported(small, small_config, out, check=check_export)
        if torchscript:
            entry = report["torchscript"] = {"path": script_path}

            def check_script(tmp: str) -> None:
                got = deploy.load_torchscript(tmp)(*model_inputs(example))
                entry["diff"] = _check_agreement("torchscript", got, expected)

            entry["bytes"] = deploy.export_torchscript(small, example, script_path, check_script)
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


def _ckpt_parser(tool: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"esssm {tool}", description=description)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `lightning fit`")
    return parser


def export_main(argv: list[str]) -> int:
    """Write a standalone model holding only spectral channels 1..k (checked, checksummed)."""
    parser = _ckpt_parser(
        "export",
        "Write a standalone model holding only spectral channels 1..k "
        "(load it with esssm.deploy.load_exported; no Lightning, no data needed).",
    )
    parser.add_argument("--budget", type=positive_int, required=True, help="spectral budget k to keep")
    parser.add_argument("--out", required=True, help="output file, e.g. model_k8.pt")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--torchscript", action="store_true", help="also write OUT.torchscript.pt (traced)")
    parser.add_argument("--batch", type=positive_int, default=1, help="example batch size for the checks and the trace")
    parser.add_argument("--seq-len", type=positive_int, help="example length (default: the model's seq_len); "
                        "TorchScript graphs are specialised to it")
    args = parser.parse_args(argv)
    report = export_model(
        args.ckpt, args.budget, args.out, args.batch, args.seq_len, args.torchscript, args.overwrite
    )
    print(format_export(report))
    return 0


def plan_main(argv: list[str]) -> int:
    """Best budget for a latency target on this machine, from the checkpoint's own budget curve."""
    parser = _ckpt_parser("plan", "Best budget for a latency target on this machine.")
    parser.add_argument("--latency-ms", type=positive_float, required=True, help="latency target per batch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size of the timed forward pass")
    parser.add_argument("--seq-len", type=positive_int, help="input length (default: the model's seq_len)")
    parser.add_argument("--curve", help="budget-accuracy CSV measured on this checkpoint (default: the one "
                        "`esssm sweep` or training wrote beside --ckpt for it)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed rounds over all budgets (median)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed rounds first")
    args = parser.parse_args(argv)
    model, config, source = _deploy_source(args.ckpt)
    deploy.elastic_k_max(model)
    curve_path = deploy.curve_for(args.ckpt, source, args.curve)
    curve = deploy.read_curve(curve_path)
    if not curve:
        raise ValueError(f"{curve_path} has no per-budget rows (a model without a spectral budget?)")
    seq_len = _seq_len(config, args.seq_len)
    example = deploy.synthetic_batch(config, args.batch, seq_len)
    budgets = [p.budget for p in curve]
    latencies = deploy.measure_latencies(model, example, budgets, args.device, args.repeats, args.warmup)
    best, rows = deploy.plan_budget(curve, latencies, args.latency_ms)
    print(f"curve: {curve_path}; latency: batch {args.batch} x length {seq_len} on {args.device}")
    print(deploy.format_plan(rows, best, args.latency_ms))
    return 0 if best is not None else 1


def cascade_main(argv: list[str]) -> int:
    """Anytime inference: accuracy vs compute of escalating low-confidence inputs."""
    parser = _ckpt_parser(
        "cascade",
        "Anytime inference: accuracy vs compute of escalating low-confidence inputs "
        "from small to large budgets, next to the fixed-budget curve.",
    )
    parser.add_argument("--data-config", required=True, help="YAML with a data: section (e.g. the fit config)")
    parser.add_argument("--data-dir", help="override data.init_args.data_dir")
    parser.add_argument("--batch-size", type=positive_int, help="override the evaluation batch size")
    parser.add_argument("--budgets", type=budget_list, default=[2, 4, 8, 32],
                        help="cascade stages, comma-separated, ascending (capped at k_max)")
    parser.add_argument("--thresholds", type=threshold_list, default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.99],
                        help="confidence (max softmax prob) below which an input escalates")
    parser.add_argument("--split", choices=["val", "test"], default="val",
                        help="choose thresholds on val; report the chosen one on test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    model, _, _ = _deploy_source(args.ckpt)
    k_max = deploy.elastic_k_max(model)
    stages = range(1, k_max + 1) if args.budgets == "all" else args.budgets
    budgets = sorted({min(k, k_max) for k in stages})
    overrides = {"data_dir": args.data_dir, "eval_batch_size": args.batch_size}
    datamodule = load_datamodule(args.data_config, {k: v for k, v in overrides.items() if v is not None})
    datamodule.setup("test" if args.split == "test" else "validate")
    loader = datamodule.test_dataloader if args.split == "test" else datamodule.val_dataloader
    rows = deploy.cascade_sweep(model, loader, budgets, args.thresholds, args.device)
    print(f"{args.split} split, {rows[0]['count']} examples, device {args.device}")
    print(deploy.format_cascade(rows))
    return 0


# --------------------------------------------------------------------------- generation


def load_language_model(path: str | Path) -> torch.nn.Module:
    """The model of an `esssm export` file, or the evaluation (EMA) weights of a training
    checkpoint; both in eval mode."""
    if _is_export(Path(path)):
        return deploy.load_exported(path)
    return _deploy_source(str(path))[0]


def _is_export(path: Path) -> bool:
    """Whether `path` holds an `esssm export` payload (memory-mapped peek, no full read)."""
    if not path.is_file():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, OSError, pickle.UnpicklingError):
        return False
    return isinstance(payload, dict) and payload.get("format") == deploy.EXPORT_FORMAT


def generate_main(argv: list[str]) -> int:
    """Generate bytes from a byte-level LM at any budget (FutureFill or naive recomputation)."""
    from esssm import generate

    parser = argparse.ArgumentParser(
        prog="esssm generate",
        description="Generate bytes from a byte-level LM (training checkpoint or `esssm export` "
        "file, EMA weights) at a spectral budget; prints prompt + continuation.",
    )
    parser.add_argument("--ckpt", required=True, help="training checkpoint or `esssm export` file")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--budget", type=positive_int, help="spectral budget k for every byte (default: k_max)")
    budget.add_argument("--budget-schedule", help="budget per position, e.g. '32,4@600,16@900' "
                        "(32 from position 0, 4 from 600, ...; positions include the prompt)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default="", help="prompt text (UTF-8); empty: start from a newline")
    prompt.add_argument("--prompt-file", help="read the prompt bytes from this file")
    parser.add_argument("--max-new-bytes", type=positive_int, required=True, help="bytes to generate")
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (argmax)")
    parser.add_argument("--top-k", type=positive_int, help="sample among the k most likely bytes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    parser.add_argument("--method", choices=generate.METHODS, default="futurefill",
                        help="futurefill (fast) or naive (full forward per byte, the reference)")
    parser.add_argument("--out", help="write the text (raw bytes) here instead of printing it")
    parser.add_argument("--force", action="store_true", help="let --out replace an existing file")
    args = parser.parse_args(argv)
    if args.out and Path(args.out).exists() and not args.force:
        parser.error(f"--out {args.out} exists; choose another path or pass --force to replace it")
    prompt_bytes = Path(args.prompt_file).read_bytes() if args.prompt_file else args.prompt.encode()
    model = load_language_model(args.ckpt)
    k_max = generate.lm_k_max(model)
    schedule = generate.parse_schedule(args.budget_schedule, k_max) if args.budget_schedule else args.budget
    start = time.perf_counter()
    result = generate.generate(
        model, prompt_bytes, args.max_new_bytes, schedule, args.temperature, args.top_k, args.seed, args.method
    )
    seconds = time.perf_counter() - start
    text = prompt_bytes + result.text(include_prompt=False)
    if args.out:
        atomic_write_bytes(args.out, text)
    else:
        sys.stdout.buffer.write(text + b"\n")
        sys.stdout.flush()
    budget_text = args.budget_schedule or f"k={args.budget or k_max}"
    print(f"{args.max_new_bytes} bytes at {budget_text} (k_max={k_max}) by {args.method} in {seconds:.2f} s "
          f"({args.max_new_bytes / max(seconds, 1e-9):.0f} bytes/s)", file=sys.stderr)
    return 0


TOOLS = {
    "sweep": sweep_main, "export": export_main, "plan": plan_main, "cascade": cascade_main,
    "generate": generate_main,
}
