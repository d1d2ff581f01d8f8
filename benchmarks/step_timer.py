"""A callback for timing `lightning fit` from the command line: the median seconds per training
step after the first `skip` steps, printed at the end of training (benchmarks/fit_threads.sh).

    lightning fit --config conf/quick/listops/esssm.yaml --trainer.max_steps 25 \
        --trainer.callbacks+=benchmarks.step_timer.StepTimer
"""

from __future__ import annotations

import os
import statistics
import time

import lightning as L
import torch


class StepTimer(L.Callback):
    """Wall time of each training batch (forward, backward, optimizer step)."""

    def __init__(self, skip: int = 5) -> None:
        self.skip, self.seconds, self.start = skip, [], 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.seconds.append(time.perf_counter() - self.start)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        timed = self.seconds[self.skip:] or self.seconds
        print(f"STEPTIMER threads={torch.get_num_threads()} OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} "
              f"steps={len(timed)} median={statistics.median(timed):.3f} s/step", flush=True)
