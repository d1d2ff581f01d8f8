"""The budget table of a trained run on one split: every budget evaluated by BudgetSweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.loggers import Logger

from esssm.budget import sweep_budgets
from esssm.infer.plan import curve_name
from esssm.train.callbacks import BudgetSweep, write_curve
from esssm.train.lit import SequenceModule


def run_sweep(
    module: SequenceModule,
    datamodule: L.LightningDataModule,
    budgets: list[int] | str | None = None,
    split: str = "test",
    accelerator: str = "auto",
    output_dir: str | Path | None = None,
    logger: Logger | bool = False,
    reference_budgets: list[int] | None = None,
    progress: str | None = None,
    expected_s: float | None = None,
    stream: TextIO | None = None,
) -> list[dict[str, Any]]:
    """Evaluate a trained module (from `load_module`) at every budget on one split; rows of budget,
    acc, loss, params. Raises FloatingPointError on a non-finite loss.

    With `output_dir`, the curve goes to `output_dir/<checkpoint stem>.budget_curve_{split}.csv`
    with the checkpoint's name, sha256, epoch and step on every row (so it never replaces the
    curve training wrote, and `esssm plan` can tell which checkpoint it belongs to). With a
    TensorBoard `logger` the sweep is logged into that run too (the test curve as a series over k;
    a model without a budget as a flat line over `reference_budgets`). With `progress` (a label
    prefix, "" for none) a progress line with an ETA goes to `stream` (stderr by default);
    `expected_s` guesses the sweep's seconds until its first batch is done.
    """
    from esssm.lab.progress import SweepProgress

    callbacks: list[L.Callback] = []
    if progress is not None:
        count = len(sweep_budgets(module.k_max, budgets))
        label = f"{progress}{split} sweep at {count} budget{'s' if count > 1 else ''}"
        callbacks.append(SweepProgress(label, stream, expected_s=expected_s))
    sweep = BudgetSweep(val_budgets=budgets, test_budgets=budgets, every_n_epochs=1, curve_file=None,
                        reference_budgets=reference_budgets)
    trainer = L.Trainer(
        default_root_dir=output_dir,
        accelerator=accelerator,
        devices=1,
        logger=logger,
        callbacks=[sweep, *callbacks],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    run = trainer.test if split == "test" else trainer.validate
    run(module, datamodule=datamodule, verbose=False)
    rows = sweep.last_results["test" if split == "test" else "val"]
    if output_dir is not None:
        path = Path(output_dir) / curve_name(module.source["checkpoint"], split)
        write_curve(path, rows, **module.source)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width budget table: budget, accuracy (%), loss, active parameters, examples."""
    lines = [f"{'budget':>6}  {'acc %':>7}  {'loss':>7}  {'active params':>13}  {'examples':>8}"]
    lines += [
        f"{r['budget']!s:>6}  {100 * r['acc']:7.2f}  {r['loss']:7.4f}  {r['active_params']:13,d}  {r['count']:8d}"
        for r in rows
    ]
    return "\n".join(lines)
