"""Budget sweep of one fixed model on N CPU processes (gloo); rank 0 writes the rows as JSON.

Run by tests/test_ddp.py as a script, because Lightning's DDP launcher re-executes sys.argv.
"""

import json
import sys
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).parent))
from toy_data import ToyDataModule  # noqa: E402

from esssm.model import ESSSM  # noqa: E402
from esssm.train.callbacks import BudgetSweep  # noqa: E402
from esssm.train.lit import SequenceModule  # noqa: E402


def main(devices: int, out: str, mode: str = "validate") -> None:
    """mode "validate": one validation pass; "fit": a fit that stops by max_steps mid-epoch, before
    any scheduled sweep, so the sweep runs at its end (lr 0: the same weights on 1 and 2 processes)."""
    L.seed_everything(0)
    backbone = ESSSM(d_model=16, n_layers=1, seq_len=24, k_max=4, dropout=0.0, drop_path=0.0)
    task = SequenceModule(backbone, num_classes=3, vocab_size=8, ema_decay=None, lr=0.0 if mode == "fit" else 2e-4)
    sweep = BudgetSweep([1, 2, 4], every_n_epochs=10)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        logger=False, callbacks=[sweep], enable_progress_bar=False, enable_model_summary=False,
        max_steps=3, max_epochs=40, enable_checkpointing=False, default_root_dir=Path(out).parent,  # the CSV
    )
    data = ToyDataModule(val_size=61, eval_batch_size=4)
    if mode == "fit":
        trainer.fit(task, data)
    else:
        trainer.validate(task, data, verbose=False)
    if trainer.is_global_zero:
        val_acc = trainer.callback_metrics.get("val/acc", trainer.callback_metrics["val/acc@k4"])
        Path(out).write_text(json.dumps({"rows": sweep.last_results["val"], "world": trainer.world_size,
                                         "val_acc": float(val_acc), "step": trainer.global_step}))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], *sys.argv[3:])
