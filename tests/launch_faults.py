"""A fault for the launcher tests, loaded by the fit process through --trainer.callbacks."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L


class KillOnce(L.Callback):
    """SIGKILLs its own fit process, as a lost node would, when run `version` starts epoch `epoch`
    (after the previous epoch's last.ckpt), once: the `marker` file it writes first remembers."""

    def __init__(self, version: str, marker: str, epoch: int = 1) -> None:
        super().__init__()
        self.version, self.marker, self.epoch = version, Path(marker), epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.logger.version == self.version and trainer.current_epoch == self.epoch and not self.marker.exists():
            self.marker.write_text("killed\n")
            os.kill(os.getpid(), signal.SIGKILL)
