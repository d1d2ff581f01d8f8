"""The three performance targets of the fast layer, measured interleaved and judged.

    python -m benchmarks.targets --threads 1 --json docs/benchmarks_data/cpu_targets_1t.json

1. budget scaling: layer inference at k = k_max/4 takes at most 0.35x the time at k_max (L=4096);
2. training: full-budget layer forward+backward at least 1.5x faster than the naive yardstick;
3. long context: ES-SSM backbone inference faster than the Transformer at matched parameters
   (L=16384, same depth).
Each round times every contender once, in turn, so a burst of load from other processes hits
all of them alike; the medians over rounds are compared.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from benchmarks.bench_baselines import build_models
from benchmarks.timing import add_common_args, finish, reference_twin, start, sync, time_once, workload
from esssm.layer import ESSSMLayer


def interleaved(runs: dict[str, Callable[[], object]], device, rounds: int) -> dict[str, list[float]]:
    """Milliseconds of each run over `rounds` rounds, every run once per round, after a warm-up."""
    for run in runs.values():
        run()
    sync(device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(time_once(run, device))
    return times


def judge(name: str, times: dict[str, list[float]], num: str, den: str, bound: float, better: str) -> dict:
    """ratio = median(num) / median(den), met when below (better='below') or above the bound."""
    ratio = statistics.median(times[num]) / statistics.median(times[den])
    met = ratio <= bound if better == "below" else ratio >= bound
    return {"target": name, "ratio": ratio, "bound": bound, "better": better, "met": met,
            **{f"{key}_median_ms": statistics.median(v) for key, v in times.items()},
            **{f"{key}_min_ms": min(v) for key, v in times.items()}}


def budget_and_training(args, device) -> list[dict]:
    length, k_max = args.length, args.k_max
    layer = ESSSMLayer(args.d_model, length, k_max).to(device)
    x = torch.randn(args.batch or max(1, args.tokens // length), length, args.d_model, device=device)
    runs = {f"k{k}": workload(lambda u, k=k: layer(u, budget=k), x, layer, "inference", args.amp)
            for k in (k_max // 4, k_max)}
    scaling = judge(f"inference k={k_max // 4} / k={k_max}, L={length}",
                    interleaved(runs, device, args.rounds), f"k{k_max // 4}", f"k{k_max}", 0.35, "below")
    naive = reference_twin(layer)
    runs = {"layer": workload(lambda u: layer(u), x, layer, "training", args.amp),
            "naive": workload(naive, x, naive, "training", args.amp)}
    training = judge(f"training speedup over naive, k={k_max}, L={length}",
                     interleaved(runs, device, max(3, args.rounds // 3)), "naive", "layer", 1.5, "above")
    return [scaling, training]


def long_context(args, device) -> dict:
    length = args.long_length
    models = {name: m.to(device).eval() for name, m in build_models(["transformer"], length, args).items()}
    batch = args.batch or max(1, args.tokens // length)
    runs = {name: workload(m, torch.randn(batch, length, m.d_model, device=device), m, "inference", args.amp)
            for name, m in models.items()}
    return judge(f"ES-SSM / Transformer inference, {args.layers} layers, L={args.long_length}",
                 interleaved(runs, device, max(3, args.rounds // 3)), "esssm", "transformer", 1.0, "below")


def table(rows: list[dict]) -> str:
    lines = ["| target | ratio | bound | met | medians (ms) |", "|---|---|---|---|---|"]
    for r in rows:
        medians = ", ".join(f"{k[:-10]} {v:.1f}" for k, v in r.items() if k.endswith("_median_ms"))
        sign = "<=" if r["better"] == "below" else ">="
        lines.append(f"| {r['target']} | {r['ratio']:.2f} | {sign} {r['bound']} | {'yes' if r['met'] else 'NO'} | {medians} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, lengths=None, cuda_tokens=65536)
    p.add_argument("--length", type=int, default=4096, help="targets 1 and 2")
    p.add_argument("--long-length", type=int, default=16384, help="target 3")
    p.add_argument("--layers", type=int, default=2, help="backbone depth for target 3")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args(argv)
    device, info = start(args)
    rows = budget_and_training(args, device) + [long_context(args, device)]
    finish(args, info, rows, table(rows))
    return rows


if __name__ == "__main__":
    main()
