"""`esssm` tools that work on a trained checkpoint: sweep, export, plan, cascade, generate.

Argument parsing only: each tool parses its options, checks them before any work, and calls
the library (esssm.lab.loading, esssm.lab.sweep, esssm.infer, esssm.infer.generate). The library is imported
after parsing, so `esssm TOOL --help` answers without importing torch.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from esssm.files import atomic_write_bytes

if TYPE_CHECKING:
    from esssm.train.lit import SequenceModule


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
    """'all', 'paper' or comma-separated distinct budgets >= 1, e.g. '2,4,8' (`parse_budgets`)."""
    from esssm.budget import parse_budgets

    try:
        return parse_budgets(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def threshold_list(text: str) -> list[float]:
    """Comma-separated finite confidences, e.g. '0.5,0.9'."""
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must be finite, got {text!r}")
    return values


def key_of(module: str, table: str) -> Callable[[str], str]:
    """An argument type accepting the keys of `module.table` (e.g. esssm.infer.RUNTIMES), imported
    only when a value is parsed, so building the parser (and `--help`) stays light."""

    def check(text: str) -> str:
        keys = getattr(importlib.import_module(module), table)
        if text not in keys:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(sorted(keys))}, got {text!r}")
        return text

    return check


def add_checkpoint_arguments(
    parser: argparse.ArgumentParser, what: str = "checkpoint written by `lightning fit`"
) -> None:
    """--ckpt and --trust-checkpoint, the same on every tool."""
    parser.add_argument("--ckpt", required=True, help=what)
    parser.add_argument(
        "--trust-checkpoint", action="store_true",
        help="unpickle --ckpt in full even if it names code beyond tensors (an older or foreign checkpoint). "
        "This RUNS CODE FROM THE FILE: use it only for a file from a source you trust. Without it such a "
        "file is refused; checkpoints written by this project never need it",
    )


def check_budgets(module: SequenceModule, budgets: list[int] | str | None, ckpt: str) -> None:
    """Budgets outside 1..k_max of the checkpoint are refused before any data is read."""
    from esssm.budget import sweep_budgets

    try:
        sweep_budgets(module.k_max, budgets, "--budgets")
    except ValueError as error:
        raise ValueError(f"{error} of {ckpt}") from None


def sweep_main(argv: list[str]) -> int:
    """Budget table (accuracy, loss, active parameters per budget) of a trained checkpoint."""
    parser = argparse.ArgumentParser(prog="esssm sweep", description="Budget table of a trained checkpoint.")
    add_checkpoint_arguments(parser)
    parser.add_argument("--data-config", required=True, help="YAML with a data: section (e.g. the fit config)")
    parser.add_argument("--data-dir", help="override data.init_args.data_dir")
    parser.add_argument("--batch-size", type=positive_int, help="override the evaluation batch size")
    parser.add_argument("--budgets", type=budget_list, help="comma-separated budgets, 'all', or 'paper' (the default)")
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args(argv)
    from esssm import infer
    from esssm.lab.loading import load_datamodule, load_module
    from esssm.lab.sweep import format_table, run_sweep

    overrides = {"data_dir": args.data_dir, "eval_batch_size": args.batch_size}
    datamodule = load_datamodule(args.data_config, {k: v for k, v in overrides.items() if v is not None})
    module = load_module(args.ckpt, trust=args.trust_checkpoint)
    check_budgets(module, args.budgets, args.ckpt)  # before the data is read (at setup)
    rows = run_sweep(module, datamodule, args.budgets, args.split, args.accelerator, output_dir=Path(args.ckpt).parent,
                     progress="")
    print(format_table(rows))
    print(f"curve: {Path(args.ckpt).parent / infer.curve_name(args.ckpt, args.split)}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- deployment


def _ckpt_parser(tool: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"esssm {tool}", description=description)
    add_checkpoint_arguments(parser)
    return parser


def export_main(argv: list[str]) -> int:
    """Write a standalone model holding only spectral channels 1..k (checked, checksummed)."""
    parser = _ckpt_parser(
        "export",
        "Write a standalone model holding only spectral channels 1..k "
        "(load it with esssm.infer.load_exported; no Lightning, no data needed).",
    )
    budget = parser.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget", type=positive_int, help="spectral budget k to keep")
    budget.add_argument("--elastic", action="store_true", help="with --format onnx: one file serving every budget, "
                        "k an int64 scalar input `budget` (the cost follows k)")
    parser.add_argument("--out", required=True, help="output file, e.g. model_k8.pt (model_k8.onnx, model_k8.pt2)")
    parser.add_argument("--format", choices=["torch", "onnx", "pt2"], default="torch",
                        help="torch: a PyTorch file for esssm.infer.load_exported; onnx: an ONNX graph with dynamic "
                        "batch and length (<= seq_len), checked in onnxruntime (esssm.infer.load_onnx); pt2: an "
                        "AOTInductor package (compiled C++, dynamic batch and length), checked against PyTorch "
                        "(esssm.infer.load_pt2)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--torchscript", action="store_true", help="also write OUT.torchscript.pt (traced; --format torch)")
    parser.add_argument("--batch", type=positive_int, default=1, help="example batch size for the checks and the trace "
                        "(ONNX: checked at this size and one more)")
    parser.add_argument("--seq-len", type=positive_int, help="example length (default: the model's seq_len); "
                        "TorchScript graphs are specialised to it (ONNX: checked at it and about half)")
    args = parser.parse_args(argv)
    from esssm import infer
    from esssm.lab.loading import load_eval_model

    if args.torchscript and args.format != "torch":
        parser.error(f"--torchscript comes with --format torch; a {args.format} export is one file")
    if args.format == "pt2" and Path(args.out).suffix != ".pt2":
        parser.error(f"--format pt2 writes a .pt2 file (torch's loader expects the suffix), got --out {args.out}")
    if args.elastic and args.format != "onnx":
        parser.error("--elastic comes with --format onnx (a --format torch file serves every budget up to its "
                     "--budget already: load_exported(...)(x, budget=k))")
    infer.check_targets([args.out, *([infer.torchscript_path(args.out)] if args.torchscript else [])],
                         args.overwrite)  # before any work
    full, config, _ = load_eval_model(args.ckpt, args.trust_checkpoint)
    seq_len = infer.example_seq_len(config, args.seq_len)
    if args.format == "onnx":
        print(infer.format_onnx_export(infer.export_onnx_checked(full, config, args.budget, args.out, args.batch, seq_len)))
        return 0
    example = infer.synthetic_batch(config, args.batch, seq_len)
    if args.format == "pt2":
        print(infer.format_pt2_export(infer.export_pt2_checked(full, config, args.budget, args.out, example)))
        return 0
    report = infer.export_checked(full, config, args.budget, args.out, example, args.torchscript)
    report["ckpt_bytes"] = Path(args.ckpt).stat().st_size
    print(infer.format_export(report))
    return 0


def plan_main(argv: list[str]) -> int:
    """Best budget for a latency target on this machine, from the checkpoint's own budget curve."""
    parser = _ckpt_parser("plan", "Best budget for a latency target on this machine.")
    parser.add_argument("--latency-ms", type=positive_float, required=True, help="latency target per batch")
    parser.add_argument("--runtime", type=key_of("esssm.infer", "RUNTIMES"), default="torch",
                        help="what runs the model: torch (eager), compile (torch.compile; each budget is called once "
                        "first, which compiles), "
                        "onnxruntime (each budget exported to ONNX; CPU) or pt2 (each budget compiled to an "
                        "AOTInductor package; tens of seconds each)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (torch)")
    parser.add_argument("--batch", type=positive_int, default=1, help="batch size of the timed forward pass")
    parser.add_argument("--seq-len", type=positive_int, help="input length (default: the model's seq_len)")
    parser.add_argument("--curve", help="validation budget-accuracy CSV measured on this checkpoint (default: the one "
                        "`esssm sweep --split val` or training wrote beside --ckpt for it; test curves are refused)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed rounds over all budgets (median)")
    parser.add_argument("--warmup", type=non_negative_int, default=1, help="untimed rounds first")
    args = parser.parse_args(argv)
    from esssm import infer
    from esssm.lab.loading import load_eval_model
    from esssm.lab.progress import PhaseProgress

    model, config, source = load_eval_model(args.ckpt, args.trust_checkpoint)
    infer.elastic_k_max(model)
    curve_path = infer.curve_for(args.ckpt, source, args.curve)
    curve = infer.read_curve(curve_path)
    if not curve:
        raise ValueError(f"{curve_path} has no per-budget rows (a model without a spectral budget?)")
    seq_len = infer.example_seq_len(config, args.seq_len)
    example = infer.synthetic_batch(config, args.batch, seq_len)
    budgets = [p.budget for p in curve]
    with PhaseProgress(f"preparing {len(budgets)} budgets ({args.runtime})", len(budgets), "budgets") as progress:
        forwards = infer.budget_forwards(args.runtime, model, config, example, budgets, args.device, progress.advance)
    with PhaseProgress(f"timing {len(budgets)} budgets ({args.runtime})", args.warmup + args.repeats,
                       "rounds") as progress:
        latencies = infer.time_budgets(forwards, args.device, args.repeats, args.warmup, advance=progress.advance)
    best, rows = infer.plan_budget(curve, latencies, args.latency_ms)
    print(f"curve: {curve_path}; latency: batch {args.batch} x length {seq_len} on {args.device} ({args.runtime})")
    print(infer.format_plan(rows, best, args.latency_ms))
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
    parser.add_argument("--budgets", type=budget_list, default=None,
                        help="cascade stages: comma-separated budgets within 1..k_max, 'all' or 'paper' "
                        "(default: 2, 4, 8 and k_max)")
    parser.add_argument("--thresholds", type=threshold_list, default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.99],
                        help="confidence (max softmax prob) below which an input escalates")
    parser.add_argument("--split", choices=["val", "test"], default="val",
                        help="choose thresholds on val; report the chosen one on test")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    args = parser.parse_args(argv)
    import torch

    from esssm import infer
    from esssm.budget import select_budgets
    from esssm.lab.loading import load_datamodule, load_eval_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, _, _ = load_eval_model(args.ckpt, args.trust_checkpoint)
    k_max = infer.elastic_k_max(model)
    default = sorted({k for k in (2, 4, 8) if k < k_max} | {k_max})
    budgets = select_budgets(k_max, default if args.budgets is None else args.budgets, "--budgets")
    overrides = {"data_dir": args.data_dir, "eval_batch_size": args.batch_size}
    datamodule = load_datamodule(args.data_config, {k: v for k, v in overrides.items() if v is not None})
    datamodule.setup("test" if args.split == "test" else "validate")
    loader = datamodule.test_dataloader if args.split == "test" else datamodule.val_dataloader
    from esssm.lab.progress import PhaseProgress

    with PhaseProgress(f"cascade on the {args.split} split", len(budgets) + len(args.thresholds),
                       "policies") as progress:
        rows = infer.cascade_sweep(model, loader, budgets, args.thresholds, device, advance=progress.advance)
    print(f"{args.split} split, {rows[0]['count']} examples, device {device}")
    print(infer.format_cascade(rows))
    return 0


# --------------------------------------------------------------------------- generation


def generate_main(argv: list[str]) -> int:
    """Generate bytes from a byte-level LM at any budget (FutureFill or naive recomputation)."""
    parser = argparse.ArgumentParser(
        prog="esssm generate",
        description="Generate bytes from a byte-level LM (training checkpoint or `esssm export` "
        "file, EMA weights) at a spectral budget; prints prompt + continuation.",
    )
    add_checkpoint_arguments(parser, "training checkpoint or `esssm export` file")
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
    parser.add_argument("--method", type=key_of("esssm.infer.generate", "METHODS"), default="futurefill",
                        help="futurefill (fast) or naive (full forward per byte, the reference)")
    parser.add_argument("--out", help="write the text (raw bytes) here instead of printing it")
    parser.add_argument("--overwrite", action="store_true", help="let --out replace an existing file")
    args = parser.parse_args(argv)
    if args.out and Path(args.out).exists() and not args.overwrite:
        parser.error(f"--out {args.out} exists; choose another path or pass --overwrite to replace it")
    from esssm.infer import generate
    from esssm.lab.loading import load_language_model

    prompt_bytes = Path(args.prompt_file).read_bytes() if args.prompt_file else args.prompt.encode()
    model = load_language_model(args.ckpt, args.trust_checkpoint)
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
