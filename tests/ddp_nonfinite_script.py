"""Training on 2 CPU processes (gloo) where one rank's first batch holds a NaN input; each
rank writes what happened to OUT.<rank>.json. Run by tests/test_failure_behaviour.py as a
script, because Lightning's DDP launcher re-executes sys.argv.

    python ddp_nonfinite_script.py SKIP OUT
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

from esssm.model import ESSSM
from esssm.train.lit import SequenceModule


def examples(count: int, seed: int, nan_at: int | None = None) -> list[dict]:
    """Continuous inputs x (12, 1), label = sign of their mean; example nan_at holds a NaN."""
    x = torch.randn(count, 12, 1, generator=torch.Generator().manual_seed(seed))
    if nan_at is not None:
        x[nan_at, 3, 0] = float("nan")
    return [{"x": x[i], "mask": torch.ones(12, dtype=torch.bool), "y": int(x[i].mean() > 0), "index": i}
            for i in range(count)]


def main(skip: int, out: str) -> None:
    L.seed_everything(0)
    backbone = ESSSM(d_model=8, n_layers=1, seq_len=12, k_max=4, dropout=0.0, drop_path=0.0)
    task = SequenceModule(backbone, num_classes=2, input_dim=1, ema_decay=None, skip_nonfinite_steps=skip)
    # Lightning's distributed sampler deals each example to one rank: only that rank sees the NaN.
    train = DataLoader(examples(32, 0, nan_at=5), batch_size=4)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    try:
        trainer.fit(task, train)
        error = None
    except (FloatingPointError, ValueError) as caught:
        error = f"{type(caught).__name__}: {caught}"
    finite = all(bool(torch.isfinite(p).all()) for p in task.parameters())
    outcome = {"error": error, "step": trainer.global_step, "finite": finite}
    Path(f"{out}.{trainer.global_rank}.json").write_text(json.dumps(outcome))
    # Lightning leaves the gloo group up after a failed fit; torn down at interpreter exit, its
    # threads sometimes abort the process ("terminate called without an active exception").
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
