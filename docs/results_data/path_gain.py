"""How loud is the spectral path? For each ES-SSM layer of a trained checkpoint, the RMS of the
spectral term sum_j alpha_j sigma_j^(1/4) M_j (phi_j * u) against the RMS of the skip term
D_skip u, on one validation batch at a given budget (EMA weights, as evaluated).

    python docs/results_data/path_gain.py CONFIG CKPT [CKPT ...] [--budget K]

Produced the path-gain table of docs/results.md (Ablations).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from esssm.lab.commands import load_datamodule, load_module
from esssm.layer import ESSSMLayer


def layer_gains(task, batch: dict, budget: int | None) -> list[tuple[float, float]]:
    """(spectral RMS, skip RMS) per ESSSMLayer, in depth order."""
    gains, hooks = [], []

    def record(layer: ESSSMLayer, inputs: tuple, output: torch.Tensor) -> None:
        skip = F.linear(inputs[0], layer.skip.weight)
        gains.append(((output - skip).pow(2).mean().sqrt().item(), skip.pow(2).mean().sqrt().item()))

    for module in task.eval_model.modules():
        if isinstance(module, ESSSMLayer):
            hooks.append(module.register_forward_hook(record))
    with torch.no_grad():
        task.evaluate(batch, budget)
    for hook in hooks:
        hook.remove()
    return gains


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("ckpts", nargs="+")
    parser.add_argument("--budget", type=int, default=None, help="default: the full budget")
    args = parser.parse_args()
    datamodule = load_datamodule(args.config)
    datamodule.setup("validate")
    batch = next(iter(datamodule.val_dataloader()))
    for ckpt in args.ckpts:
        task = load_module(ckpt).eval()
        cells = [f"{s:.3f}/{k:.3f}" for s, k in layer_gains(task, batch, args.budget)]
        print(f"{ckpt}: spectral/skip RMS per layer: {', '.join(cells)}")


if __name__ == "__main__":
    main()
