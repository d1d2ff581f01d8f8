"""`esssm` tools that work on a trained checkpoint: sweep, export, plan, cascade."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.loggers import Logger

from esssm import deploy
from esssm.callbacks import BudgetSweep
from esssm.lit import SequenceTask
from esssm.model import count_parameters


def load_task(ckpt: str | Path, map_location: str = "cpu") -> SequenceTask:
    """The trained task from a checkpoint; the backbone is rebuilt from its stored spec."""
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (look under runs/<name>/.../checkpoints/)")
    return SequenceTask.load_from_checkpoint(path, map_location=map_location, weights_only=False)


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
    """Evaluate a trained task at every budget on one split; rows of budget, acc, loss, params.

    The curve is also written to `output_dir/budget_curve_{split}.csv` (default: the current
    folder); pass the checkpoint's folder so `esssm plan` finds it there. With a TensorBoard
    `logger` the sweep is logged into that run too (the test curve as a series over k).
    """
    sweep = BudgetSweep(val_budgets=budgets, test_budgets=budgets, every_n_epochs=1)
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
    return sweep.last_results["test" if split == "test" else "val"]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width budget table: budget, accuracy (%), loss, active parameters, examples."""
    lines = [f"{'budget':>6}  {'acc %':>7}  {'loss':>7}  {'active params':>13}  {'examples':>8}"]
    lines += [
        f"{r['budget']!s:>6}  {100 * r['acc']:7.2f}  {r['loss']:7.4f}  {r['active_params']:13,d}  {r['count']:8d}"
        for r in rows
    ]
    return "\n".join(lines)


def _budget_list(text: str | None) -> list[int] | str | None:
    if text is None or text == "all":
        return text
    return [int(k) for k in text.split(",")]


def sweep_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="esssm sweep", description="Budget table of a trained checkpoint.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `lightning fit`")
    parser.add_argument("--data-config", required=True, help="YAML with a data: section (e.g. the fit config)")
    parser.add_argument("--data-dir", help="override data.init_args.data_dir")
    parser.add_argument("--batch-size", type=int, help="override the evaluation batch size")
    parser.add_argument("--budgets", help="comma-separated budgets, 'all', or omit for the paper grid")
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args(argv)
    overrides = {"data_dir": args.data_dir, "eval_batch_size": args.batch_size}
    datamodule = load_datamodule(args.data_config, {k: v for k, v in overrides.items() if v is not None})
    rows = run_sweep(
        load_task(args.ckpt), datamodule, _budget_list(args.budgets), args.split, args.accelerator,
        output_dir=Path(args.ckpt).parent,
    )
    print(format_table(rows))
    return 0


# --------------------------------------------------------------------------- deployment


def _deploy_source(ckpt: str) -> tuple[Any, dict[str, Any]]:
    """The evaluation weights (EMA when enabled) of a checkpoint and their `model_config`."""
    task = load_task(ckpt)
    return task.eval_model.eval(), deploy.model_config(task.hparams)


def _seq_len(config: dict[str, Any], requested: int | None) -> int:
    """--seq-len, or the backbone's own seq_len (the longest input it was built for)."""
    built = config["backbone"].get("init_args", {}).get("seq_len")
    if requested is None and built is None:
        raise ValueError("the backbone records no seq_len: pass --seq-len")
    return requested or built


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
    onnx: bool = False,
) -> dict[str, Any]:
    """Write the model of `ckpt` truncated to `budget` to `out` (plus optional TorchScript/ONNX
    files beside it), check each against the full model at `budget`, return the report."""
    full, config = _deploy_source(ckpt)
    small, small_config = deploy.truncate(full, config, budget)
    example = deploy.synthetic_batch(config, batch, _seq_len(config, seq_len))
    with torch.no_grad():
        expected = deploy.batch_logits(full, example, budget)
        report = {
            "out": out,
            "budget": budget,
            "k_max": full.k_max,
            "bytes": deploy.save_exported(small, small_config, out),
            "full_bytes": deploy.state_bytes(full),
            "ckpt_bytes": Path(ckpt).stat().st_size,
            "params": count_parameters(small),
            "full_params": count_parameters(full),
            "diff": _check_agreement("export", deploy.batch_logits(deploy.load_exported(out), example), expected),
            "shape": tuple(example[next(iter(example))].shape),
        }
        for kind, enabled, suffix, write in (
            ("torchscript", torchscript, ".torchscript.pt", deploy.export_torchscript),
            ("onnx", onnx, ".onnx", deploy.export_onnx),
        ):
            if enabled:
                path = str(Path(out).with_suffix(suffix))
                report[kind] = {"path": path, "bytes": write(small, example, path)}
                if kind == "torchscript":
                    got = deploy.load_torchscript(path)(*deploy.model_inputs(small, example))
                    report[kind]["diff"] = _check_agreement(kind, got, expected)
    return report


def format_export(report: dict[str, Any]) -> str:
    budget = report["budget"]
    lines = [
        f"exported budget k={budget} of k_max={report['k_max']} -> {report['out']}",
        f"  parameters: {report['full_params']:,d} -> {report['params']:,d}",
        f"  file size:  {_mb(report['full_bytes'])} (model weights at k_max) -> {_mb(report['bytes'])}"
        f"; training checkpoint {_mb(report['ckpt_bytes'])}",
        f"  max |logits - full model at k={budget}|: {report['diff']:.2e} on a synthetic {report['shape']} batch",
    ]
    for kind in ("torchscript", "onnx"):
        if kind in report:
            extra = f", max |diff| {report[kind]['diff']:.2e}" if "diff" in report[kind] else ""
            lines.append(f"  {kind}: {report[kind]['path']} ({_mb(report[kind]['bytes'])}{extra})")
    return "\n".join(lines)


def _ckpt_parser(tool: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"esssm {tool}", description=description)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `lightning fit`")
    return parser


def export_main(argv: list[str]) -> int:
    parser = _ckpt_parser(
        "export",
        "Write a standalone model holding only spectral channels 1..k "
        "(load it with esssm.deploy.load_exported; no Lightning, no data needed).",
    )
    parser.add_argument("--budget", type=int, required=True, help="spectral budget k to keep")
    parser.add_argument("--out", required=True, help="output file, e.g. model_k8.pt")
    parser.add_argument("--torchscript", action="store_true", help="also write OUT.torchscript.pt (traced)")
    parser.add_argument("--onnx", action="store_true", help="also try OUT.onnx (see the README: unsupported)")
    parser.add_argument("--batch", type=int, default=1, help="example batch size for the checks and the trace")
    parser.add_argument("--seq-len", type=int, help="example length (default: the model's seq_len); "
                        "TorchScript graphs are specialised to it")
    args = parser.parse_args(argv)
    report = export_model(args.ckpt, args.budget, args.out, args.batch, args.seq_len, args.torchscript, args.onnx)
    print(format_export(report))
    return 0


def plan_main(argv: list[str]) -> int:
    parser = _ckpt_parser("plan", "Best budget for a latency target on this machine.")
    parser.add_argument("--latency-ms", type=float, required=True, help="latency target per batch")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the timed forward pass")
    parser.add_argument("--seq-len", type=int, help="input length (default: the model's seq_len)")
    parser.add_argument("--curve", help="budget-accuracy CSV (default: budget_curve_{val,test}.csv beside --ckpt)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds over all budgets (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    args = parser.parse_args(argv)
    curve_path = args.curve or deploy.find_curve(args.ckpt)
    if curve_path is None:
        raise FileNotFoundError(
            f"no budget_curve_val.csv or budget_curve_test.csv beside {args.ckpt}: make one with "
            f"`esssm sweep --ckpt {args.ckpt} --data-config <fit config> --split val` (it writes "
            "budget_curve_val.csv beside the checkpoint), or pass any such CSV with --curve"
        )
    curve = deploy.read_curve(curve_path)
    if not curve:
        raise ValueError(f"{curve_path} has no per-budget rows (a model without a spectral budget?)")
    model, config = _deploy_source(args.ckpt)
    deploy.elastic_k_max(model)
    seq_len = _seq_len(config, args.seq_len)
    example = deploy.synthetic_batch(config, args.batch, seq_len)
    budgets = [p.budget for p in curve]
    latencies = deploy.measure_latencies(model, example, budgets, args.device, args.repeats, args.warmup)
    best, rows = deploy.plan_budget(curve, latencies, args.latency_ms)
    print(f"curve: {curve_path}; latency: batch {args.batch} x length {seq_len} on {args.device}")
    print(deploy.format_plan(rows, best, args.latency_ms))
    return 0 if best is not None else 1


def _numbers(text: str, kind: type) -> list:
    """'2,4,8' -> [2, 4, 8] (kind int) or [2.0, 4.0, 8.0] (kind float), with a clear error."""
    try:
        return [kind(t) for t in text.split(",")]
    except ValueError:
        raise ValueError(f"expected comma-separated {kind.__name__}s, got {text!r}") from None


def cascade_main(argv: list[str]) -> int:
    parser = _ckpt_parser(
        "cascade",
        "Anytime inference: accuracy vs compute of escalating low-confidence inputs "
        "from small to large budgets, next to the fixed-budget curve.",
    )
    parser.add_argument("--data-config", required=True, help="YAML with a data: section (e.g. the fit config)")
    parser.add_argument("--data-dir", help="override data.init_args.data_dir")
    parser.add_argument("--batch-size", type=int, help="override the evaluation batch size")
    parser.add_argument("--budgets", default="2,4,8,32", help="cascade stages, ascending (capped at k_max)")
    parser.add_argument("--thresholds", default="0.5,0.7,0.8,0.9,0.95,0.99",
                        help="confidence (max softmax prob) below which an input escalates")
    parser.add_argument("--split", choices=["val", "test"], default="val",
                        help="choose thresholds on val; report the chosen one on test")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    model, _ = _deploy_source(args.ckpt)
    k_max = deploy.elastic_k_max(model)
    budgets = sorted({min(k, k_max) for k in _numbers(args.budgets, int)})
    overrides = {"data_dir": args.data_dir, "eval_batch_size": args.batch_size}
    datamodule = load_datamodule(args.data_config, {k: v for k, v in overrides.items() if v is not None})
    datamodule.setup("test" if args.split == "test" else "validate")
    loader = datamodule.test_dataloader if args.split == "test" else datamodule.val_dataloader
    rows = deploy.cascade_sweep(model, loader, budgets, _numbers(args.thresholds, float), args.device)
    print(f"{args.split} split, {rows[0]['count']} examples, device {args.device}")
    print(deploy.format_cascade(rows))
    return 0


TOOLS = {"sweep": sweep_main, "export": export_main, "plan": plan_main, "cascade": cascade_main}
