"""ES-SSM layer and model speed/memory over sequence length x budget, against the naive
yardstick and a plain matmul of the mixing GEMM's size.

    python -m benchmarks.bench_layer                 # CPU default grid (a few minutes on 2 cores)
    python -m benchmarks.bench_layer --quick         # smoke run, under a minute
    python -m benchmarks.bench_layer --lengths 1024,4096,16384 --model-layers 2 --json out.json
    python -m benchmarks.bench_layer --device cuda --tokens 131072 --model-layers 8

Each configuration: warm-up, repeats, median (and min) in one process, so ratios between rows
are taken within one run. Inference runs under torch.no_grad; training is forward + backward
of a sum-of-squares loss.
"""

from __future__ import annotations

import argparse
import math
import torch

from benchmarks.timing import (
    Measurement,
    add_common_args,
    finish,
    measure,
    measure_or_none,
    parse_ints,
    reference_twin,
    start,
    workload,
)
from esssm.layer import ESSSMLayer, ESSSMSettings
from esssm.model import ESSSM
from esssm.ops.gemm import matmul_nt
from esssm.spectral import fast_fft_size


def work_flops(batch: int, length: int, k: int, d: int, training: bool) -> dict[str, float]:
    """The layer's unavoidable work: the k D x D mixing GEMMs and the FFTs (2.5 N log2 N each).

    Forward: D forward + k*D inverse real FFTs of size nfft, 2*B*L*k*D^2 GEMM flops. Backward
    doubles the FFTs (k*D forward + D inverse) and the GEMM twice over (dM and dW).
    """
    nfft = fast_fft_size(2 * length - 1)
    gemm = 2.0 * batch * length * k * d * d
    fft = 2.5 * nfft * math.log2(nfft) * batch * d * (k + 1)
    return {"gemm": gemm * (3 if training else 1), "fft": fft * (2 if training else 1)}


def matmul_reference(batch: int, length: int, k: int, d: int, device: torch.device, args) -> dict:
    """Plain matmuls of the mixing GEMM's size (B*L, k*D) x (k*D, D), same run: torch's `@`
    (MKL on CPU) and the oneDNN path the layer uses; the faster one is the bound."""
    a = torch.randn(batch * length, k * d, device=device)
    b = torch.randn(k * d, d, device=device)
    flop = 2.0 * batch * length * k * d * d
    plain = measure(lambda: a @ b, device, args.warmup, args.repeats).median_ms
    layer_gemm = measure(lambda: matmul_nt(b.t(), a), device, args.warmup, args.repeats).median_ms
    return {"matmul_gflops": flop / plain / 1e6, "best_gemm_gflops": flop / min(plain, layer_gemm) / 1e6}


def row(kind: str, mode: str, length: int, k: int, batch: int, m: Measurement, **extra) -> dict:
    return {"kind": kind, "mode": mode, "seq_len": length, "k": k, "batch": batch, **m.as_dict(), **extra}


def bench_length(length: int, args, device: torch.device) -> list[dict]:
    """Every row for one sequence length: layer, naive, model, matmul reference."""
    batch = args.batch or max(1, args.tokens // length)
    d = args.d_model
    torch.manual_seed(0)
    layer = ESSSMLayer(d, length, args.k_max, ESSSMSettings(checkpoint=args.checkpoint)).to(device)
    model = None
    if args.model_layers:
        model = ESSSM(d, args.model_layers, length, args.k_max, layer={"checkpoint": args.checkpoint}).to(device).eval()
    x = torch.randn(batch, length, d, device=device)
    rows = []
    for k in args.budgets:
        if k > args.k_max:
            continue
        rows += bench_budget(layer, model, x, k, args, device)
        print_progress(rows, length, k)
    return rows


def bench_budget(layer, model, x, k: int, args, device) -> list[dict]:
    """Layer (with its work and bound), naive yardstick and model rows at budget k."""
    batch, length, d = x.shape
    ref = matmul_reference(batch, length, k, d, device, args)
    naive = reference_twin(layer)
    rows = []
    for mode in args.modes:
        flops = work_flops(batch, length, k, d, mode == "training")
        work = sum(flops.values()) / 1e9
        m = time_call(layer, lambda u: layer(u, budget=k), x, mode, device, args)
        if m is not None:
            achieved = work / m.median_ms * 1e3
            rows.append(row("layer", mode, length, k, batch, m, work_gflop=work,
                            fft_share_of_work=flops["fft"] / sum(flops.values()), **ref,
                            achieved_gflops=achieved, fraction_of_bound=achieved / ref["best_gemm_gflops"]))
        if k in args.naive_budgets:
            m = time_call(naive, lambda u: naive(u, budget=k), x, mode, device, args)
            rows += [row("naive", mode, length, k, batch, m)] if m else []
        if model is not None:
            m = time_call(model, lambda u: model(u, budget=k), x, mode, device, args)
            rows += [row("model", mode, length, k, batch, m, layers=args.model_layers)] if m else []
    return rows


def time_call(module, fn, x, mode: str, device, args) -> Measurement | None:
    return measure_or_none(workload(fn, x, module, mode, args.amp), device, args.warmup, args.repeats)


def print_progress(rows: list[dict], length: int, k: int) -> None:
    done = [r for r in rows if r["seq_len"] == length and r["k"] == k]
    cells = "  ".join(f"{r['kind']}/{r['mode'][:5]} {r['median_ms']:8.1f} ms" for r in done)
    print(f"L={length:6d} k={k:3d}  {cells}", flush=True)


def summary_table(rows: list[dict], k_max: int) -> str:
    """Markdown table: per (L, k) layer inference/training time and memory, ratio to k_max,
    the naive yardstick's speedup and the achieved fraction of a matmul's FLOP/s."""
    index = {(r["kind"], r["mode"], r["seq_len"], r["k"]): r for r in rows}
    head = ("| L | k | inf ms | inf / k_max | train ms | inf MiB | train MiB | naive train ms "
            "| speedup | model inf ms | model train ms | inf work GF/s | torch mm GF/s | best GEMM GF/s "
            "| fraction |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for length, k in sorted({(r["seq_len"], r["k"]) for r in rows if r["kind"] == "layer"}):
        lines.append(table_line(index, length, k, k_max))
    return "\n".join(lines)


def table_line(index: dict, length: int, k: int, k_max: int) -> str:
    def get(kind: str, mode: str, key: str, kk: int = k) -> float | None:
        r = index.get((kind, mode, length, kk))
        return None if r is None else r.get(key)

    def fmt(value: float | None, spec: str = ".1f") -> str:
        return "" if value is None else format(value, spec)

    inf, full = get("layer", "inference", "median_ms"), get("layer", "inference", "median_ms", k_max)
    train, naive = get("layer", "training", "median_ms"), get("naive", "training", "median_ms")
    cells = [
        str(length), str(k), fmt(inf), fmt(inf / full if inf and full else None, ".2f"), fmt(train),
        fmt(get("layer", "inference", "peak_mb")), fmt(get("layer", "training", "peak_mb")),
        fmt(naive), fmt(naive / train if naive and train else None, ".2f"),
        fmt(get("model", "inference", "median_ms")), fmt(get("model", "training", "median_ms")),
        fmt(get("layer", "inference", "achieved_gflops")), fmt(get("layer", "inference", "matmul_gflops")),
        fmt(get("layer", "inference", "best_gemm_gflops")),
        fmt(get("layer", "inference", "fraction_of_bound"), ".2f"),
    ]
    return "| " + " | ".join(cells) + " |"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, lengths=[1024, 4096], cuda_tokens=131072)
    p.add_argument("--budgets", type=parse_ints, default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--naive-budgets", type=parse_ints, default=[8, 32],
                   help="budgets at which the naive yardstick is also timed")
    p.add_argument("--model-layers", type=int, default=2, help="ES-SSM backbone depth; 0 skips it")
    p.add_argument("--checkpoint", action="store_true", help="recompute convolutions in backward")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="L=1024, k in {1, 8, 32}, 3 repeats, no model")
    args = p.parse_args(argv)
    if args.quick:
        args.lengths, args.budgets, args.naive_budgets = [1024], [1, 8, 32], [32]
        args.repeats, args.model_layers = 3, 0
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device, info = start(args)
    rows = [r for length in args.lengths for r in bench_length(length, args, device)]
    finish(args, info, rows, summary_table(rows, args.k_max))
    return rows


if __name__ == "__main__":
    main()
