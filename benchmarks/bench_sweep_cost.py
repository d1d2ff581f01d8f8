"""Cost of the every-k validation sweep against a training epoch, for one paper-scale config.

    python -m benchmarks.bench_sweep_cost                       # conf/scifar/esssm.yaml, 1 thread
    python -m benchmarks.bench_sweep_cost --config conf/text/esssm.yaml --train-size 25000 --val-size 25000

Times, at the config's real width and length, one training step (forward, backward, AdamW) at
the largest and smallest budgets of its budget-dropout grid, and one evaluation forward pass
at a few budgets; both are linear in k (the layer computes only channels 1..k), so the mean
training step under budget dropout and the sum of the eval passes over k = 1..K-1 (the full
budget's logits come from the normal validation step) follow from straight lines through
them. The sweep's share of an epoch is then

    val_size * sum_k eval(k)  /  (train_size * mean train step), both per example.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from esssm.budget import BudgetSampler
from esssm.model import build_module
from esssm.train.lit import SequenceModule


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def line(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of seconds against k."""
    ks, ts = list(points), list(points.values())
    mk, mt = statistics.fmean(ks), statistics.fmean(ts)
    slope = sum((k - mk) * (t - mt) for k, t in zip(ks, ts)) / sum((k - mk) ** 2 for k in ks)
    return mt - slope * mk, slope


def mean_budget(module: SequenceModule, steps: int, epoch: int) -> float:
    """The mean training budget under budget dropout after the warm-up epochs."""
    sampler: BudgetSampler = module.sampler
    return statistics.fmean(sampler.sample(step, epoch) for step in range(steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="conf/scifar/esssm.yaml")
    parser.add_argument("--batch", type=int, default=2, help="examples per timed pass (costs are per example)")
    parser.add_argument("--train-size", type=int, default=45_000, help="training examples per epoch")
    parser.add_argument("--val-size", type=int, default=5_000, help="validation examples per sweep")
    parser.add_argument("--eval-budgets", default="1,8,16,32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    config = yaml.safe_load(Path(args.config).read_text())
    model_args = {k: v for k, v in config["model"].items() if k != "backbone"}
    backbone = build_module(config["model"]["backbone"])
    seq_len, k_max = backbone.seq_len, backbone.k_max
    module = SequenceModule(backbone, num_classes=10, vocab_size=256, **model_args)
    x = torch.randint(1, 256, (args.batch, seq_len))
    batch = {"x": x, "mask": torch.ones_like(x, dtype=torch.bool), "y": torch.randint(0, 10, (args.batch,))}
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-4)

    def train_step(k: int) -> None:
        module.model.train()
        loss = F.cross_entropy(module(batch, k), batch["y"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def eval_pass(k: int) -> None:
        module.eval_model.eval()
        module.evaluate(batch, k)

    grid = module.sampler.grid
    train = {k: median_seconds(lambda: train_step(k), args.repeats) / args.batch for k in (grid[0], k_max)}
    evals = {int(k): median_seconds(lambda: eval_pass(int(k)), args.repeats) / args.batch
             for k in args.eval_budgets.split(",")}
    train_a, train_b = line(train)
    eval_a, eval_b = line(evals)
    k_mean = mean_budget(module, 10_000, epoch=module.sampler.warmup_epochs)
    train_epoch = args.train_size * (train_a + train_b * k_mean)
    sweep = args.val_size * sum(eval_a + eval_b * k for k in range(1, k_max))
    result = {
        "config": args.config, "seq_len": seq_len, "k_max": k_max, "threads": args.threads, "batch": args.batch,
        "train_s_per_example": train, "eval_s_per_example": evals, "mean_train_budget": k_mean,
        "train_epoch_s": train_epoch, "sweep_s": sweep, "sweep_over_epoch": sweep / train_epoch,
    }
    print(json.dumps(result, indent=1))
    for n in (1, 2, 5, 10):
        print(f"every_n_epochs={n}: the validation sweep adds {100 * sweep / train_epoch / n:.1f}% to training")
    if args.json:
        from esssm.files import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
