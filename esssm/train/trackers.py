"""Experiment trackers: what BudgetSweep sends beyond scalars (the budget-curve figure and the
test curve with step = k) for every Lightning logger that can show it, and an MLflow logger
whose metric names keep the budget.

    trainer:
      logger:
        - {class_path: lightning.pytorch.loggers.TensorBoardLogger, init_args: {save_dir: runs, name: lm/esssm}}
        - {class_path: esssm.train.trackers.MLFlowLogger, init_args: {tracking_uri: "file:./mlruns"}}
"""

from __future__ import annotations

from collections.abc import Mapping

from lightning.pytorch.loggers import Logger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers import MLFlowLogger as LightningMLFlowLogger


class MLFlowLogger(LightningMLFlowLogger):
    """Lightning's MLFlowLogger with the budget kept in metric names. MLflow allows only
    letters, digits, `_ - . / :` and spaces, and Lightning's logger drops any other character
    (`val/acc@k07` would become `val/acck07`, with a warning per metric): here `@` is written
    `_at_`, so the curve is `val/acc_at_k01` ... `val/acc_at_k32` in MLflow. The arguments are
    Lightning's (tracking_uri "file:./mlruns" keeps the runs in a local folder, no server)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({mlflow_name(name): value for name, value in metrics.items()}, step)


def mlflow_name(name: str) -> str:
    """A metric name MLflow accepts: `@` as `_at_` (`val/acc@k07` -> `val/acc_at_k07`)."""
    return name.replace("@", "_at_")


def shows_curves(logger: Logger) -> bool:
    """Whether the logger's tracker draws figures and charts (TensorBoard, MLflow, W&B; not CSV)."""
    return isinstance(logger, (TensorBoardLogger, LightningMLFlowLogger, WandbLogger))


def log_figure(logger: Logger, tag: str, figure, step: int) -> None:
    """A matplotlib figure under `tag` at `step`: a TensorBoard image, the MLflow artifact
    `<tag>_step<step>.png` of the run, or a W&B image; nothing for a logger that shows no figures."""
    if isinstance(logger, TensorBoardLogger):
        logger.experiment.add_figure(tag, figure, step, close=False)
    elif isinstance(logger, LightningMLFlowLogger):
        logger.experiment.log_figure(logger.run_id, figure, f"{tag}_step{step}.png")
    elif isinstance(logger, WandbLogger):
        logger.log_image(key=tag, images=[figure], step=step)


def log_curve(logger: Logger, curve: Mapping[str, Mapping[int, float]]) -> None:
    """Each series of `curve` (name -> {k: value}) as scalars whose step is k, so a tracker draws
    it against the budget and overlays runs on one chart (TensorBoard, MLflow; W&B against its
    `trainer/global_step` axis, which is k here)."""
    for name, values in curve.items():
        for k, value in values.items():
            logger.log_metrics({name: value}, step=k)
    logger.save()
