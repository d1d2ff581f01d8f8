"""BudgetSweep: evaluate every truncation level at validation/test time, exactly under DDP."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from esssm.budget import curve_summary, sweep_budgets
from esssm.files import atomic_write_text
from esssm.metrics import ExactAccuracy
from esssm.model import active_parameters


class BudgetSweep(L.Callback):
    """Evaluates the model at every budget in `budgets` on each validation and test pass.

    Logs `{stage}/acc@k{k}`, `{stage}/loss@k{k}`, `{stage}/budget_auc` (mean accuracy over
    log2 k) and `{stage}/k98` (smallest budget with >= 98% of full-budget accuracy); writes
    the budget curve (accuracy vs k and vs active parameters) to TensorBoard and a CSV next to
    the checkpoints. The full-budget logits come from the module's own evaluation step, so the
    sweep costs one forward pass per additional budget. Per-example results are de-duplicated
    by dataset index, so DDP's padded samples are never counted twice.
    """

    def __init__(
        self, budgets: list[int] | str | None = None, curve_file: str | None = "budget_curve_{stage}.csv"
    ) -> None:
        """budgets: a list of ints, "all" (1..k_max) or None (the paper's grid plus 1, k_max).
        curve_file: name of the curve CSV beside the checkpoints ({stage}: val or test); None: no CSV."""
        super().__init__()
        self.budgets_arg = budgets
        self.curve_file = curve_file
        self.budgets: list[int | None] = []
        self.metrics = nn.ModuleDict()
        self.last_results: dict[str, list[dict[str, Any]]] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.budgets = sweep_budgets(pl_module.k_max, self.budgets_arg)
        self.metrics = nn.ModuleDict({_key(k): ExactAccuracy() for k in self.budgets})
        self.metrics.to(pl_module.device)

    def _update(self, pl_module: L.LightningModule, outputs: Any, batch: dict) -> None:
        self.metrics.to(pl_module.device)
        for k in self.budgets:
            full = k == pl_module.k_max and isinstance(outputs, dict) and "logits" in outputs
            logits = outputs["logits"] if full else pl_module.evaluate(batch, k)
            self.metrics[_key(k)].update(batch["index"], *pl_module.example_stats(batch, logits))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not trainer.sanity_checking:
            self._update(pl_module, outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._update(pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish("val", trainer, pl_module)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish("test", trainer, pl_module)

    def _finish(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = []
        for k in self.budgets:
            result = self.metrics[_key(k)].compute()  # gathered over ranks, de-duplicated
            self.metrics[_key(k)].reset()
            rows.append(
                {
                    "budget": k if k is not None else "full",
                    "acc": float(result["acc"]),
                    "loss": float(result["loss"]),
                    "count": int(result["count"]),
                    "active_params": active_parameters(pl_module.eval_model, k),
                    **({"bpb": float(result["loss"]) / math.log(2)} if pl_module.hparams.task == "lm" else {}),
                }
            )
        bad = [row["budget"] for row in rows if not math.isfinite(row["loss"])]
        if bad:
            raise FloatingPointError(
                f"{stage} loss is not finite at budget(s) {bad} (global step {trainer.global_step}): the "
                "model's weights or the inputs hold NaN/inf; no budget curve is written"
            )
        self.last_results[stage] = rows
        self._log(stage, rows, pl_module)
        if trainer.is_global_zero:
            self._write_csv(stage, rows, trainer)
            self._write_figure(stage, rows, trainer)

    def _log(self, stage: str, rows: list[dict], pl_module: L.LightningModule) -> None:
        log = lambda name, value: pl_module.log(name, float(value), sync_dist=False)  # noqa: E731
        for row in rows:
            log(f"{stage}/acc@k{row['budget']}", row["acc"])
            log(f"{stage}/loss@k{row['budget']}", row["loss"])
            if "bpb" in row:
                log(f"{stage}/bpb@k{row['budget']}", row["bpb"])
        ks = [r["budget"] for r in rows if r["budget"] != "full"]
        if ks:
            summary = curve_summary(ks, [r["acc"] for r in rows])
            log(f"{stage}/budget_auc", summary["auc"])
            log(f"{stage}/k98", summary["k98"])

    @staticmethod
    def output_dir(trainer: L.Trainer) -> Path:
        """Where the curve CSV goes: beside the checkpoints, else the log dir, else the root."""
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "dirpath", None):
            return Path(ckpt.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir)

    def _write_csv(self, stage: str, rows: list[dict], trainer: L.Trainer) -> None:
        if self.curve_file is not None:
            path = self.output_dir(trainer) / self.curve_file.format(stage=stage)
            write_curve(path, rows, epoch=trainer.current_epoch, step=trainer.global_step)

    def _write_figure(self, stage: str, rows: list[dict], trainer: L.Trainer) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers or len(rows) < 2:
            return
        figure = plot_budget_curve({"model": rows})
        for logger in loggers:
            logger.experiment.add_figure(f"{stage}/budget_curve", figure, trainer.global_step)
        import matplotlib.pyplot as plt

        plt.close(figure)


def write_curve(path: str | Path, rows: list[dict], **columns: Any) -> None:
    """Write sweep rows as a CSV (atomically), each row prefixed with `columns` (epoch, step,
    the checkpoint it came from, ...), so a reader can tell which model the curve belongs to."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[*columns, *rows[0]])
    writer.writeheader()
    writer.writerows({**columns, **r} for r in rows)
    atomic_write_text(path, buffer.getvalue())


def _key(budget: int | None) -> str:
    return "full" if budget is None else f"k{budget}"


def plot_budget_curve(
    curves: dict[str, list[dict]],
    title: str = "Budget-accuracy curve",
    references: dict[str, tuple[int, float]] | None = None,
):
    """Accuracy vs budget k and vs active parameters, one line per named curve. references:
    models without a budget, name -> (parameters, accuracy), drawn as a dashed level on the k
    axis and a star on the parameter axis, so baselines sit on the same picture."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_k, by_params) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in curves.items():
        rows = [r for r in rows if r["budget"] != "full"]
        by_k.plot([r["budget"] for r in rows], [r["acc"] for r in rows], marker="o", label=name)
        by_params.plot([r["active_params"] for r in rows], [r["acc"] for r in rows], marker="o", label=name)
    for i, (name, (params, acc)) in enumerate((references or {}).items(), start=len(curves)):
        by_k.axhline(acc, linestyle="--", color=f"C{i}", label=name)
        by_params.plot([params], [acc], marker="*", markersize=12, linestyle="none", color=f"C{i}", label=name)
    by_k.set(xscale="log", xlabel="spectral budget k", ylabel="accuracy", title=title)
    by_params.set(xlabel="active parameters", ylabel="accuracy")
    by_params.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k"))
    for axis in (by_k, by_params):
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    return figure
