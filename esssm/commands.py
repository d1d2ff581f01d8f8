"""`esssm` tools that work on a trained checkpoint: sweep (and later export, plan)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from esssm.callbacks import BudgetSweep
from esssm.lit import SequenceTask


def load_task(ckpt: str | Path, map_location: str = "cpu") -> SequenceTask:
    """The trained task from a checkpoint; the backbone is rebuilt from its stored spec."""
    path = Path(ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (look under runs/<name>/.../checkpoints/)")
    return SequenceTask.load_from_checkpoint(path, map_location=map_location, weights_only=False)


def load_datamodule(config: str | Path, overrides: dict[str, Any] | None = None) -> L.LightningDataModule:
    """Instantiate the `data:` section of a YAML config (a full fit config works), with overrides
    of its init_args (e.g. data_dir, batch_size)."""
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"data config {path} does not exist (see conf/<task>/*.yaml)")
    raw = yaml.safe_load(path.read_text()) or {}
    spec = raw.get("data", raw)
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"{path} has no 'data: {{class_path: ..., init_args: ...}}' section")
    return instantiate_datamodule({**spec, "init_args": {**spec.get("init_args", {}), **(overrides or {})}})


def instantiate_datamodule(spec: dict[str, Any]) -> L.LightningDataModule:
    """A datamodule from {"class_path", "init_args"}, type-checked as LightningCLI would."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data", required=True)
    return parser.instantiate(parser.parse_object({"data": spec})).data


def run_sweep(
    task: SequenceTask,
    datamodule: L.LightningDataModule,
    budgets: list[int] | str | None = None,
    split: str = "test",
    accelerator: str = "auto",
) -> list[dict[str, Any]]:
    """Evaluate a trained task at every budget on one split; rows of budget, acc, loss, params."""
    sweep = BudgetSweep(budgets)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        callbacks=[sweep],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    run = trainer.test if split == "test" else trainer.validate
    run(task, datamodule=datamodule, verbose=False)
    return sweep.last_results["test" if split == "test" else "val"]


def format_table(rows: list[dict[str, Any]]) -> str:
    """A fixed-width budget table: budget, accuracy (%), loss, active parameters, examples."""
    lines = [f"{'budget':>6}  {'acc %':>7}  {'loss':>7}  {'active params':>13}  {'examples':>8}"]
    lines += [
        f"{r['budget']!s:>6}  {100 * r['acc']:7.2f}  {r['loss']:7.4f}  {r['active_params']:13,d}  {r['count']:8d}"
        for r in rows
    ]
    return "\n".join(lines)


def _budget_list(text: str | None) -> list[int] | str | None:
    if text is None or text == "all":
        return text
    return [int(k) for k in text.split(",")]


def sweep_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="esssm sweep", description="Budget table of a trained checkpoint.")
    parser.add_argument("--ckpt", required=True, help="checkpoint written by `lightning fit`")
    parser.add_argument("--data-config", required=True, help="YAML with a data: section (e.g. the fit config)")
    parser.add_argument("--data-dir", help="override data.init_args.data_dir")
    parser.add_argument("--batch-size", type=int, help="override the evaluation batch size")
    parser.add_argument("--budgets", help="comma-separated budgets, 'all', or omit for the paper grid")
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args(argv)
    overrides = {"data_dir": args.data_dir, "eval_batch_size": args.batch_size}
    datamodule = load_datamodule(args.data_config, {k: v for k, v in overrides.items() if v is not None})
    rows = run_sweep(load_task(args.ckpt), datamodule, _budget_list(args.budgets), args.split, args.accelerator)
    print(format_table(rows))
    return 0


TOOLS = {"sweep": sweep_main}
