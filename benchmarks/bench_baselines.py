"""ES-SSM against the baselines at matched parameters: backbone inference and training time and
peak memory over sequence lengths.

    python -m benchmarks.bench_baselines                       # CPU: 2 layers, L in {1024, 4096}
    python -m benchmarks.bench_baselines --lengths 16384 --modes inference --models esssm,transformer
    python -m benchmarks.bench_baselines --device cuda --layers 8 --lengths 1024,4096,16384

Every baseline has the ES-SSM backbone's depth and the width (`baselines.match_width`) whose
parameter count is closest to the ES-SSM backbone's at d_model=256, k_max=32, as in conf/.
ES-SSM rows are timed at several budgets; budgets do not apply to the baselines. A model whose
first call takes longer than --max-seconds is timed once and skipped at longer lengths.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from baselines import ARSTU, Mamba, Mamba2, S4D, Transformer, match_width
from benchmarks.timing import (
    Measurement,
    add_common_args,
    finish,
    measure_or_none,
    parse_ints,
    start,
    sync,
    workload,
)
from esssm.model import ESSSM, count_parameters

# name -> (builder(width, layers, seq_len), width multiple), the settings conf/ uses
BUILDERS: dict[str, tuple[Callable[[int, int, int], nn.Module], int]] = {
    "transformer": (lambda d, n, L: Transformer(d, n, n_heads=8, max_len=L), 8),
    "mamba": (lambda d, n, L: Mamba(d, n), 8),
    "mamba2": (lambda d, n, L: Mamba2(d, n, headdim=32), 16),
    "s4d": (lambda d, n, L: S4D(d, n), 8),
    "arstu": (lambda d, n, L: ARSTU(d, n, seq_len=L, num_filters=24), 8),
}


def build_models(names: list[str], length: int, args) -> dict[str, nn.Module]:
    """ES-SSM and each named baseline, width-matched to the ES-SSM backbone's parameters."""
    esssm = ESSSM(args.d_model, args.layers, length, args.k_max)
    target = count_parameters(esssm)
    models = {"esssm": esssm}
    for name in names:
        if name == "esssm":
            continue
        build, multiple = BUILDERS[name]
        width = match_width(lambda d: build(d, args.layers, length), target, multiple)
        models[name] = build(width, args.layers, length)
    return models


def bench_model(name: str, model: nn.Module, length: int, args, device) -> list[dict]:
    """Rows for one model at one length: ES-SSM at each budget, a baseline once."""
    model = model.to(device).eval()
    batch = args.batch or max(1, args.tokens // length)
    x = torch.randn(batch, length, model.d_model, device=device)
    budgets = args.budgets if name == "esssm" else [None]
    rows = []
    for k in budgets:
        for mode in args.modes:
            m, capped = timed(workload(lambda u: model(u, budget=k), x, model, mode, args.amp), device, args)
            rows.append({
                "model": name, "mode": mode, "seq_len": length, "k": k, "batch": batch,
                "params": count_parameters(model), "d_model": model.d_model, "capped": capped,
                **(m.as_dict() if m else {"median_ms": None, "out_of_memory": True}),
            })
            print(f"L={length:6d} {name:12s} k={str(k):4s} {mode:9s} {_ms(rows[-1]):>20s} ms", flush=True)
    model.cpu()
    return rows


def timed(run: Callable[[], object], device, args) -> tuple[Measurement | None, bool]:
    """measure() after one warm-up call; a warm-up slower than --max-seconds is the only
    call, and out of memory gives None (capped = True either way: the model is skipped at
    longer lengths)."""
    try:
        start_time = time.perf_counter()
        run()
        sync(device)
        first = time.perf_counter() - start_time
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None, True
    if first > args.max_seconds:
        return Measurement(first * 1e3, first * 1e3, 1, None), True
    return measure_or_none(run, device, warmup=0, repeats=args.repeats), False


def summary_table(rows: list[dict]) -> str:
    """Markdown: one line per (L, model, k) with params, width, times and memory."""
    index = {(r["seq_len"], r["model"], r["k"], r["mode"]): r for r in rows}
    lines = ["| L | model | k | params (M) | d_model | inference ms | training ms | inf MiB | train MiB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for length, name, k in dict.fromkeys((r["seq_len"], r["model"], r["k"]) for r in rows):
        inf, train = index.get((length, name, k, "inference")), index.get((length, name, k, "training"))
        first = inf or train
        cells = [str(length), name, "" if k is None else str(k), f"{first['params'] / 1e6:.2f}",
                 str(first["d_model"]), _ms(inf), _ms(train), _mb(inf), _mb(train)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ms(r: dict | None) -> str:
    if r is None:
        return ""
    if r["median_ms"] is None:
        return "out of memory"
    return f"{r['median_ms']:.1f}" + (" (1 call, capped)" if r["capped"] else "")


def _mb(r: dict | None) -> str:
    return "" if r is None or r.get("peak_mb") is None else f"{r['peak_mb']:.0f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, lengths=[1024, 4096], cuda_tokens=65536)
    p.add_argument("--models", type=lambda s: s.split(","), default=["esssm", *BUILDERS])
    p.add_argument("--budgets", type=parse_ints, default=[32, 8, 2], help="ES-SSM budgets")
    p.add_argument("--layers", type=int, default=2, help="depth of every backbone (authors: 8)")
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.set_defaults(repeats=3)
    args = p.parse_args(argv)
    unknown = set(args.models) - {"esssm", *BUILDERS}
    if unknown:
        p.error(f"unknown models {sorted(unknown)}; choose from esssm, {', '.join(BUILDERS)}")
    return args


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device, info = start(args)
    rows, too_slow = [], set()
    for length in args.lengths:
        for name, model in build_models(args.models, length, args).items():
            if name in too_slow or name not in args.models:
                continue
            new = bench_model(name, model, length, args, device)
            too_slow |= {name for r in new if r["capped"]}
            rows += new
    finish(args, info, rows, summary_table(rows))
    return rows


if __name__ == "__main__":
    main()
