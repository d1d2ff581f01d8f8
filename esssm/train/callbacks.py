"""BudgetSweep: evaluate every truncation level at validation/test time, exactly under DDP."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import nn

from esssm.budget import curve_summary, parse_budgets, sweep_budgets
from esssm.files import atomic_write_csv
from esssm.model import active_parameters
from esssm.plots import curve_metric, plot_budget_curve
from esssm.train.metrics import ExactAccuracy
from esssm.train.trackers import log_curve, log_figure, shows_curves


# Validation sweeps every k on every 10th epoch (and the last): at the paper-scale sCIFAR config a
# sweep of all 32 budgets costs about one training epoch (measured, docs/design.md section 5), so
# this keeps it near 10% of the training time.
VAL_SWEEP_EVERY_N_EPOCHS = 10


class BudgetSweep(L.Callback):
    """Evaluates the model at every budget in `test_budgets` on each test pass, and at every
    budget in `val_budgets` on the validation passes of every `every_n_epochs`-th epoch, or the
    first pass at or after every `every_n_steps`-th optimizer step (and of the last epoch or
    step); the other validation passes score the full budget only. However a
    fit ends (max_epochs, max_steps, max_time, early stopping, or SIGTERM right after a
    validation), its final validation is a sweep: when the last pass was not one, the sweep runs
    at the end of training on the same weights, so every run has a budget curve.

    Logs `{stage}/acc@k{k}`, `{stage}/loss@k{k}` (and `bpb@k` for language models) with k
    zero-padded to the width of k_max (`acc@k01` ... `acc@k32`, so tags sort in budget order),
    `{stage}/budget_auc` (mean accuracy over log2 k) and `{stage}/k98` (smallest budget with
    >= 98% of full-budget accuracy). With TensorBoard it also writes a custom-scalars layout
    (the test curve against k first, then one multiline chart per metric over every k); to
    TensorBoard, MLflow and W&B it sends the test curve as a series whose step is k
    (`test/acc_vs_k`, so runs overlay on one chart; a model without a budget draws its score as
    a flat line over `reference_budgets`) and the curve figure (`esssm.train.trackers`). Test scalars
    are logged at the evaluated model's training step and never touch the training run's `epoch`
    series (a fresh evaluation trainer would log epoch 0 at step 0, and TensorBoard then drops
    every later point of that series). A CSV of the curve goes
    next to the checkpoints. The full-budget logits come from the module's own evaluation step,
    so a sweep costs one forward pass per additional budget. Per-example results are
    de-duplicated by dataset index, so DDP's padded samples are never counted twice.
    """

    def __init__(
        self,
        val_budgets: list[int] | str | None = "all",
        test_budgets: list[int] | str | None = "all",
        every_n_epochs: int | None = VAL_SWEEP_EVERY_N_EPOCHS,
        curve_file: str | None = "budget_curve_{stage}.csv",
        every_n_steps: int | None = None,
        reference_budgets: list[int] | None = None,
    ) -> None:
        """Budgets: a list of ints, "all" (1..k_max) or "paper" (the paper's grid plus 1, k_max).

        every_n_epochs: validation sweeps every n-th epoch. The default keeps the sweep of every
        k of the paper-scale sCIFAR config near 10% of its training time (docs/design.md).
        every_n_steps: instead, sweep the first validation pass at or after every n-th optimizer
        step (runs that validate within an epoch: the authors' LM curve every 12,000 steps); needs
        `every_n_epochs: null`, so one schedule is in force.
        curve_file: name of the curve CSV beside the checkpoints ({stage}: val or test); None: no CSV.
        reference_budgets: for a model without a budget (a Transformer), the k values at which its
        full test score is written to `test/acc_vs_k`: a flat reference line on the k chart of
        the elastic models it is compared with (`./reproduce.sh` passes their budgets).
        """
        super().__init__()
        check_sweep_schedule(every_n_epochs, every_n_steps)
        self.budget_args = {s: parse_budgets(arg, f"sweep.{s}_budgets") for s, arg in
                            (("val", val_budgets), ("test", test_budgets))}
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.curve_file = curve_file
        self.reference_budgets = list(reference_budgets or [])
        self.budgets: dict[str, list[int | None]] = {"val": [], "test": []}
        self.metrics = nn.ModuleDict()
        self.last_results: dict[str, list[dict[str, Any]]] = {}
        # global steps of this fit's latest validation pass and latest validation sweep
        self.validated_step: int | None = None
        self.swept_step: int | None = None
        self.step_epoch = 0  # the epoch of the latest training step (Lightning counts an ended epoch on)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.budgets = {
            s: sweep_budgets(pl_module.k_max, arg, f"sweep.{s}_budgets") for s, arg in self.budget_args.items()
        }
        keys = {_key(k) for budgets in self.budgets.values() for k in budgets}
        self.metrics = nn.ModuleDict({key: ExactAccuracy() for key in sorted(keys)})
        self.metrics.to(pl_module.device)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.validated_step = self.swept_step = None
        if trainer.is_global_zero and pl_module.k_max is not None:
            for logger in _tensorboards(trainer):
                logger.experiment.add_custom_scalars(custom_scalars_layout(pl_module.objective.score))

    def sweeps_validation(self, trainer: L.Trainer) -> bool:
        """Whether this validation pass sweeps: always in `validate`; while fitting, in every n-th
        epoch (or the first pass since the latest multiple of every_n_steps that has no sweep
        yet), the last epoch and at max_steps; never in the sanity check. (A fit that ends
        otherwise sweeps at its end: `on_train_end`.)"""
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != TrainerFn.FITTING:
            return True
        epoch = trainer.current_epoch + 1
        last_epoch = trainer.max_epochs not in (None, -1) and epoch >= trainer.max_epochs
        last_step = trainer.max_steps not in (None, -1) and trainer.global_step >= trainer.max_steps
        if self.every_n_steps is not None:
            due = trainer.global_step // self.every_n_steps > (self.swept_step or 0) // self.every_n_steps
        else:
            due = epoch % self.every_n_epochs == 0
        return due or last_epoch or last_step

    def _update(self, stage: str, pl_module: L.LightningModule, outputs: Any, batch: dict) -> None:
        self.metrics.to(pl_module.device)
        for k in self.budgets[stage]:
            full = k == pl_module.k_max and isinstance(outputs, dict) and "logits" in outputs
            logits = outputs["logits"] if full else pl_module.evaluate(batch, k)
            self.metrics[_key(k)].update(batch["index"], *pl_module.example_stats(batch, logits))

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.sweeps_validation(trainer):
            self._update("val", pl_module, outputs, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._update("test", pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.sweeps_validation(trainer):
            self._finish("val", trainer, pl_module)
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self.validated_step = trainer.global_step

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish("test", trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.step_epoch = trainer.current_epoch

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The fit ended (max_epochs, max_steps, max_time, early stopping): sweep now unless its
        last validation pass was a sweep of these very weights."""
        if pl_module.k_max is not None and self.swept_step != trainer.global_step:
            self.sweep_after_fit(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """SIGTERM (every DDP rank stops at the same step): sweep when the weights were validated
        at this step (the stop came right after a validation and its checkpoint) but not swept;
        weights trained since the last validation were never evaluated and are not swept."""
        if (isinstance(exception, SIGTERMException) and pl_module.k_max is not None
                and self.validated_step == trainer.global_step != self.swept_step):
            self.sweep_after_fit(trainer, pl_module)

    def sweep_after_fit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Sweep the validation set on the current (evaluation) weights once Lightning's loops have
        ended, as a validation pass would: on every DDP rank over its shard (the rows are
        gathered), with the pass's batch limit, device transfer and autocast. Logged directly to
        the loggers at the current step. Nothing happens for a run without validation data."""
        if not trainer.enable_validation:
            return
        trainer.fit_loop.epoch_loop.val_loop.setup_data()  # a no-op when a validation pass already ran
        loaders = trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders] if loaders is not None else []
        if not loaders or not sum(trainer.num_val_batches):
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.inference_mode(), trainer.precision_plugin.val_step_context():
            for loader, limit in zip(loaders, trainer.num_val_batches):
                for batch in itertools.islice(loader, None if math.isinf(limit) else int(limit)):
                    batch = trainer.strategy.batch_to_device(batch)
                    self._update("val", pl_module, {"logits": pl_module.evaluate(batch, None)}, batch)
        pl_module.train(was_training)
        self._finish("val", trainer, pl_module, in_loop=False)

    def _epoch(self, trainer: L.Trainer, in_loop: bool) -> int:
        """The epoch a curve belongs to, as its checkpoint records it."""
        return trainer.current_epoch if in_loop else self.step_epoch

    def _finish(self, stage: str, trainer: L.Trainer, pl_module: L.LightningModule, in_loop: bool = True) -> None:
        """Gather the rows, log them (through `pl_module.log` inside a Lightning loop, else to the
        loggers directly) and write the CSV and figure."""
        rows = []
        for k in self.budgets[stage]:
            result = self.metrics[_key(k)].compute()  # gathered over ranks, de-duplicated
            self.metrics[_key(k)].reset()
            rows.append(
                {
                    "budget": k if k is not None else "full",
                    "acc": float(result["acc"]),
                    "loss": float(result["loss"]),
                    "count": int(result["count"]),
                    "active_params": active_parameters(pl_module.eval_model, k),
                    **pl_module.objective.extra_metrics(float(result["loss"])),
                }
            )
        bad = [row["budget"] for row in rows if not math.isfinite(row["loss"])]
        if bad:
            raise FloatingPointError(
                f"{stage} loss is not finite at budget(s) {bad} (global step {trainer.global_step}): the "
                "model's weights or the inputs hold NaN/inf; no budget curve is written"
            )
        self.last_results[stage] = rows
        metrics = curve_metrics(stage, rows, pl_module.k_max)
        if stage == "test":  # a logged "step" is used as the step, and Lightning adds no "epoch"
            metrics["step"] = float(trained_step(trainer, pl_module))
        if in_loop:
            for name, value in metrics.items():
                pl_module.log(name, value, sync_dist=False)
        else:
            log_after_loop(trainer, metrics)
        if stage == "val" and trainer.state.fn == TrainerFn.FITTING:
            self.swept_step = trainer.global_step
        folder = self.output_dir(trainer)  # on every rank: trainer.log_dir is a collective under DDP
        if trainer.is_global_zero:
            self._write_csv(stage, rows, trainer, folder, self._epoch(trainer, in_loop))
            self._write_figure(stage, rows, trainer, pl_module)
            if stage == "test":
                self._write_curve_series(self.curve_series_rows(rows), trainer)

    @staticmethod
    def output_dir(trainer: L.Trainer) -> Path:
        """Where the curve CSV goes: beside the checkpoints, else the log dir, else the root."""
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "dirpath", None):
            return Path(ckpt.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir)

    def _write_csv(self, stage: str, rows: list[dict], trainer: L.Trainer, folder: Path, epoch: int) -> None:
        if self.curve_file is not None:
            path = folder / self.curve_file.format(stage=stage)
            write_curve(path, rows, epoch=epoch, step=trainer.global_step)

    def _write_figure(self, stage: str, rows: list[dict], trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [logger for logger in trainer.loggers if shows_curves(logger)]
        if not loggers or len(rows) < 2:
            return
        figure = plot_budget_curve({"model": rows}, metric=curve_metric(rows), split=stage)
        step = trained_step(trainer, pl_module) if stage == "test" else trainer.global_step
        for logger in loggers:
            log_figure(logger, f"{stage}/budget_curve", figure, step)
        import matplotlib.pyplot as plt

        plt.close(figure)

    def curve_series_rows(self, rows: list[dict]) -> list[dict]:
        """The rows drawn against k: the per-budget rows, or for a model without a budget its
        full-budget row repeated at every `reference_budgets` k (a flat line)."""
        per_budget = [r for r in rows if r["budget"] != "full"]
        full = [r for r in rows if r["budget"] == "full"]
        if per_budget or not full:
            return per_budget
        return [{**full[0], "budget": k} for k in self.reference_budgets]

    @staticmethod
    def _write_curve_series(rows: list[dict], trainer: L.Trainer) -> None:
        """The test curve as scalars with step = k: TensorBoard (or MLflow) then draws accuracy
        (and loss or bits per byte) against k, and overlays every run's curve on one chart."""
        budgets = [r for r in rows if r["budget"] != "full"]
        curve = {f"test/{metric}_vs_k": {r["budget"]: r[metric] for r in budgets if metric in r}
                 for metric in ("acc", "loss", "bpb") if any(metric in r for r in budgets)}
        for logger in trainer.loggers:
            if shows_curves(logger):
                log_curve(logger, curve)


def check_sweep_schedule(every_n_epochs: int | None, every_n_steps: int | None) -> None:
    """Exactly one validation-sweep schedule, each >= 1; else an error naming the settings."""
    if (every_n_epochs is None) == (every_n_steps is None):
        raise ValueError(
            f"sweep.every_n_epochs ({every_n_epochs}) and sweep.every_n_steps ({every_n_steps}): set exactly "
            "one validation-sweep schedule and the other to null (e.g. every_n_steps: 12000, every_n_epochs: null)"
        )
    for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
        if value is not None and value < 1:
            raise ValueError(f"sweep.{name} must be >= 1 (1 = sweep at every validation), got {value}")


def trained_step(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
    """The training step of the evaluated weights: the checkpoint's (`load_module`'s `source`) in a
    fresh evaluation trainer, else the trainer's global step."""
    source = getattr(pl_module, "source", None) or {}
    return trainer.global_step or int(source.get("step") or 0)


def _tensorboards(trainer: L.Trainer) -> list[TensorBoardLogger]:
    return [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def curve_metrics(stage: str, rows: list[dict], k_max: int | None) -> dict[str, float]:
    """The scalars of a sweep: `{stage}/{acc,loss,bpb}@k..` per budget, `budget_auc` and `k98`."""
    metrics = {
        budget_tag(stage, metric, row["budget"], k_max): float(row[metric])
        for row in rows for metric in ("acc", "loss", "bpb") if metric in row
    }
    ks = [r["budget"] for r in rows if r["budget"] != "full"]
    if ks:
        summary = curve_summary(ks, [r["acc"] for r in rows])
        metrics |= {f"{stage}/budget_auc": float(summary["auc"]), f"{stage}/k98": float(summary["k98"])}
    return metrics


def log_after_loop(trainer: L.Trainer, metrics: dict[str, float]) -> None:
    """Log scalars at the current step where `LightningModule.log` is not allowed (after the fit
    loop): to every logger (rank 0 only) and into `trainer.callback_metrics`."""
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()
    trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})


def write_curve(path: str | Path, rows: list[dict], **columns: Any) -> None:
    """Write sweep rows as a CSV (atomically), each row prefixed with `columns` (epoch, step,
    the checkpoint it came from, ...), so a reader can tell which model the curve belongs to."""
    atomic_write_csv(path, [{**columns, **r} for r in rows])


def _key(budget: int | None) -> str:
    return "full" if budget is None else f"k{budget}"


def budget_tag(stage: str, metric: str, budget: int | str | None, k_max: int | None) -> str:
    """`val/acc@k07`: the budget zero-padded to the digits of k_max, so tags sort by budget;
    `val/acc@kfull` for a model without a budget."""
    if budget in (None, "full"):
        return f"{stage}/{metric}@kfull"
    return f"{stage}/{metric}@k{budget:0{len(str(k_max))}d}"


def custom_scalars_layout(score: str) -> dict[str, dict[str, list]]:
    """TensorBoard custom-scalars layout, one category (the first, expanded): the test sweep
    against k of `score` (the objective's: "bpb" or "acc"; every run of the task on one chart),
    then one multiline chart per metric with a line per budget k over training."""
    return {
        "budget curves": {
            f"test {score} vs budget k (x axis = k)": ["Multiline", [rf"^test/{score}_vs_k$"]],
            f"val {score} at every budget k": ["Multiline", [rf"^val/{score}@k\d+$"]],
            "val loss at every budget k": ["Multiline", [r"^val/loss@k\d+$"]],
        }
    }
