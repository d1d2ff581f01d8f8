"""Latency against the budget k on every runtime a trained model deploys to, side by side.

    python -m benchmarks.bench_runtimes --threads 1 --json runtimes.json     # the docs/benchmarks.md table
    python -m benchmarks.bench_runtimes --lengths 256 --budgets 1,8 --layers 1  # smoke run

Model: an ES-SSM classifier (d_model 256, k_max 32, 2 layers, byte-sized vocabulary) built for
seq_len = L, batch 1 at the full length. Runtimes are those of `esssm plan --runtime`:

- torch: eager PyTorch at budget k (the fast kernel);
- compile: the same model through torch.compile (Inductor; the kernel an opaque op);
- onnxruntime: the model truncated to k, exported to ONNX (`esssm export --format onnx`);
- pt2: the model truncated to k, compiled to an AOTInductor package (`esssm export --format pt2`).

Every (runtime, k) call is timed in the same interleaved rounds (`esssm.infer.time_budgets`),
so load from other processes hits all cells alike. Reported per call: the median CPU time of the
process (with one thread, what a call costs on a core of its own however loaded the machine is)
and the median wall time; and each runtime's relative difference from eager PyTorch at k.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from benchmarks.timing import finish, parse_cpu_run, parse_ints
from esssm import infer
from esssm.model import ESSSM, module_spec

RUNTIMES = ("torch", "compile", "onnxruntime", "pt2")
VOCAB = 257


def make_model(seq_len: int, d_model: int, layers: int, k_max: int) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    backbone = ESSSM(d_model, layers, seq_len=seq_len, k_max=k_max, dropout=0.0, drop_path=0.0)
    config = {"backbone": module_spec(backbone), "num_classes": 10, "vocab_size": VOCAB, "input_dim": None,
              "task": "classification"}
    model = infer.build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # lift the mixing matrices off their 1e-3 init: a visible spectral path
            p.add_(0.05 * torch.randn_like(p))
    return model, config


class CpuAndWallTimer:
    """time_budgets' timer: returns the call's process CPU milliseconds, keeps the wall ones."""

    def __init__(self) -> None:
        self.wall: dict[object, list[float]] = {}

    def __call__(self, fn: Callable[[], object], device: object) -> float:
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        self.wall.setdefault(fn, []).append(wall * 1e3)
        return cpu * 1e3


def bench_length(length: int, args: argparse.Namespace) -> list[dict]:
    model, config = make_model(length, args.d_model, args.layers, args.k_max)
    example = infer.synthetic_batch(config, 1, length)
    forwards, setup_s = {}, {}
    for runtime in args.runtimes:
        begin = time.perf_counter()
        for k, call in infer.budget_forwards(runtime, model, config, example, args.budgets).items():
            forwards[runtime, k] = call
        setup_s[runtime] = time.perf_counter() - begin
        print(f"L={length}: {runtime} ready in {setup_s[runtime]:.0f} s", flush=True)
    with torch.inference_mode():
        expected = {k: infer.batch_logits(model, example, k) for k in args.budgets}
    timer = CpuAndWallTimer()
    cpu_ms = infer.time_budgets(forwards, rounds=args.rounds, warmup=1, timer=timer)
    rows = []
    for (runtime, k), call in forwards.items():
        out = call()
        got = out[0] if isinstance(out, list) else out  # onnxruntime: a list of outputs
        rows.append({
            "length": length, "runtime": runtime, "k": k, "cpu_ms": cpu_ms[runtime, k],
            "wall_ms": statistics.median(timer.wall[call][1:]), "setup_s": setup_s[runtime],
            "rel_diff": infer.relative_error(got, expected[k]),
        })
    return rows


def table(rows: list[dict], budgets: list[int], runtimes: list[str]) -> str:
    """Per length: CPU ms per call against k, one column per runtime, then t(8)/t(32)."""
    lines = []
    for length in sorted({r["length"] for r in rows}):
        cell = {(r["runtime"], r["k"]): r for r in rows if r["length"] == length}
        lines += [f"L = {length} (CPU ms per call; wall ms in the JSON)", "",
                  "| k | " + " | ".join(runtimes) + " |", "|---" * (len(runtimes) + 1) + "|"]
        for k in budgets:
            lines.append(f"| {k} | " + " | ".join(f"{cell[rt, k]['cpu_ms']:.1f}" for rt in runtimes) + " |")
        if 8 in budgets and 32 in budgets:
            ratios = [cell[rt, 8]["cpu_ms"] / cell[rt, 32]["cpu_ms"] for rt in runtimes]
            lines.append("| t(8)/t(32) | " + " | ".join(f"{r:.2f}" for r in ratios) + " |")
        worst = {rt: max(cell[rt, k]["rel_diff"] for k in budgets) for rt in runtimes}
        lines.append("| max rel. diff from eager | " + " | ".join(f"{worst[rt]:.1e}" for rt in runtimes) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lengths", type=parse_ints, default=[1024, 4096])
    p.add_argument("--budgets", type=parse_ints, default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--runtimes", type=lambda s: s.split(","), default=list(RUNTIMES))
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--k-max", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    args, info = parse_cpu_run(p)
    rows = [row for length in args.lengths for row in bench_length(length, args)]
    finish(args, info, rows, table(rows, args.budgets, args.runtimes))


if __name__ == "__main__":
    main()
