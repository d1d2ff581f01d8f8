"""Where one ES-SSM layer call spends its time: profiler self time by kind of kernel.

    python -m benchmarks.profile_layer --threads 1 --lengths 4096 --budgets 8,32

Kinds: fft (rfft/irfft), gemm (mm/addmm/bmm and oneDNN linear), elementwise (the complex
products, the gate weighting, copies, fills, reductions) and other. Profiler overhead inflates
small ops a little; the shares, not the absolute times, are the point.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.timing import add_common_args, finish, parse_ints, start, workload
from esssm.layer import ESSSMLayer

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise")
ELEMENTWISE_OPS = ("aten::mul", "aten::mul_", "aten::add", "aten::add_", "aten::addcmul_", "aten::copy_",
                   "aten::fill_", "aten::sum", "aten::zero_", "aten::softmax", "aten::_softmax", "aten::gelu",
                   "aten::gelu_backward", "aten::_softmax_backward_data", "aten::pow", "aten::div")


def kind(name: str) -> str:
    if "fft" in name:
        return "fft"
    if name in GEMM_OPS:
        return "gemm"
    return "elementwise" if name in ELEMENTWISE_OPS else "other"


def shares(run, device: torch.device) -> dict[str, float]:
    """Self time in ms per kind for one call of run (after one warm-up call)."""
    run()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    totals: dict[str, float] = {}
    for event in prof.key_averages():
        self_us = event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total
        totals[kind(event.key)] = totals.get(kind(event.key), 0.0) + self_us / 1e3
    return totals


def table(rows: list[dict]) -> str:
    lines = ["| L | k | mode | total ms | FFT | GEMM | elementwise | other (Python, views, norms) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        total = sum(r["ms"].values())
        pct = [f"{100 * r['ms'].get(k, 0.0) / total:.0f}%" for k in ("fft", "gemm", "elementwise", "other")]
        lines.append(f"| {r['seq_len']} | {r['k']} | {r['mode']} | {total:.1f} | " + " | ".join(pct) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p, lengths=[4096], cuda_tokens=131072)
    p.add_argument("--budgets", type=parse_ints, default=[8, 32])
    args = p.parse_args(argv)
    device, info = start(args)
    rows = []
    for length in args.lengths:
        layer = ESSSMLayer(args.d_model, length, args.k_max).to(device)
        x = torch.randn(args.batch or max(1, args.tokens // length), length, args.d_model, device=device)
        for k in args.budgets:
            for mode in args.modes:
                run = workload(lambda u: layer(u, budget=k), x, layer, mode, args.amp)
                rows.append({"seq_len": length, "k": k, "mode": mode, "ms": shares(run, device)})
    finish(args, info, rows, table(rows))
    return rows


if __name__ == "__main__":
    main()
