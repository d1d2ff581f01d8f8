"""What torch.compile buys: a whole ES-SSM classifier, eager against compiled, in one run.

    python -m benchmarks.bench_compile --threads 1                       # quick and full widths
    python -m benchmarks.bench_compile --widths quick --budgets 4,16 --json out.json

Widths are those of the ListOps configs: quick (conf/quick/listops: d=64, 2 layers, L=256, k_max=16,
batch 32) and full (conf/listops: d=256, 8 layers, L=2000, k_max=32; batch 1 on a CPU). Inference
runs under torch.no_grad; training is forward + backward of a mean-square loss on the logits (the
optimizer step is the same code either way). Compiled means `torch.compile(model)` with Inductor,
the spectral kernel an opaque op inside its graph; the first calls (compilation) are reported
separately and left out of the timings, and so is the largest difference of the logits from eager
(relative to their largest magnitude).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from benchmarks.timing import Measurement, finish, measure, parse_cpu_run, parse_ints
from esssm.infer.model import relative_error
from esssm.model import ESSSM, SequenceClassifier

# (d_model, n_layers, seq_len, k_max, CPU batch) of conf/quick/listops and conf/listops.
WIDTHS = {"quick": (64, 2, 256, 16, 32), "full": (256, 8, 2000, 32, 1)}
VOCAB = 20


def make_model(width: str) -> tuple[SequenceClassifier, tuple[torch.Tensor, torch.Tensor]]:
    """The width's classifier (no dropout: timings of the maths) and a full-length input batch."""
    d, layers, length, k_max, batch = WIDTHS[width]
    torch.manual_seed(0)
    backbone = ESSSM(d, layers, seq_len=length, k_max=k_max, dropout=0.0, drop_path=0.0)
    model = SequenceClassifier(backbone, num_classes=10, vocab_size=VOCAB, embed_dropout=0.0)
    x = torch.randint(VOCAB, (batch, length))
    return model, (x, torch.ones_like(x, dtype=torch.bool))


def call(model: torch.nn.Module, fn: Callable, inputs: tuple, mode: str, k: int) -> Callable[[], object]:
    """One inference pass, or one forward + backward, of `fn` (the model, eager or compiled) at k."""
    if mode == "inference":
        def run() -> object:
            with torch.no_grad():
                return fn(*inputs, budget=k)
        return run

    def step() -> None:
        model.zero_grad(set_to_none=True)
        fn(*inputs, budget=k).square().mean().backward()
    return step


def first_call_s(run: Callable[[], object]) -> float:
    begin = time.perf_counter()
    run()
    return time.perf_counter() - begin


def bench(width: str, modes: list[str], budgets: list[int], repeats: int) -> list[dict]:
    model, inputs = make_model(width)
    torch._dynamo.reset()  # a fresh recompile budget: past its limit Dynamo silently runs eager code
    compiled = torch.compile(model)
    rows = []
    for mode in modes:
        model.train(mode == "training")
        for k in budgets:
            eager_run, compiled_run = call(model, model, inputs, mode, k), call(model, compiled, inputs, mode, k)
            compile_s = first_call_s(compiled_run)
            with torch.no_grad():
                expected = model(*inputs, budget=k)
                diff = relative_error(compiled(*inputs, budget=k), expected)
            times: dict[str, Measurement] = {
                "eager": measure(eager_run, torch.device("cpu"), 1, repeats),
                "compiled": measure(compiled_run, torch.device("cpu"), 1, repeats),
            }
            rows.append({
                "width": width, "mode": mode, "k": k, "batch": inputs[0].shape[0], "length": inputs[0].shape[1],
                "eager_ms": times["eager"].median_ms, "compiled_ms": times["compiled"].median_ms,
                "speedup": times["eager"].median_ms / times["compiled"].median_ms, "first_call_s": compile_s,
                "max_rel_diff": diff,
            })
            print(rows[-1], flush=True)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| width | mode | B x L | k | eager ms | compiled ms | eager / compiled | first compiled call s | max rel. diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['width']} | {r['mode']} | {r['batch']} x {r['length']} | {r['k']} | {r['eager_ms']:.1f} | "
            f"{r['compiled_ms']:.1f} | {r['speedup']:.2f} | {r['first_call_s']:.1f} | {r['max_rel_diff']:.1e} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--widths", type=lambda s: s.split(","), default=["quick", "full"])
    p.add_argument("--modes", type=lambda s: s.split(","), default=["inference", "training"])
    p.add_argument("--budgets", type=parse_ints, default=None, help="default: 4 and each width's k_max")
    p.add_argument("--repeats", type=int, default=5)
    args, info = parse_cpu_run(p)
    rows = []
    for width in args.widths:
        budgets = args.budgets or [4, WIDTHS[width][3]]
        rows += bench(width, args.modes, budgets, args.repeats)
    finish(args, info, rows, table(rows))


if __name__ == "__main__":
    main()
