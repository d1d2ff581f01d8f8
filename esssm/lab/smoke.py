"""`./reproduce.sh --full --smoke`: every full-profile config, at its real sequence length and
width, for 2 optimizer steps and one validation batch swept at every budget, before anyone
spends GPU-days on it.

Each config trains through the same `esssm fit --config conf/<task>/<model>.yaml` a user runs,
in its own process, with overrides for the data folder (small data generated in the task's
release format by `datamodules.samples`), the step count and the batch, plus a `SmokeProbe`
callback. The probe fails the run, naming the config, on any non-finite loss or logit; it
records the parameters, seconds per optimizer step and peak memory. `results/smoke.md` then
projects the full run's time on this device: optimizer steps of the real data set x s/step.

On a GPU each config runs at its own batch size. On a CPU it runs at `--smoke-batch` (default 2)
and the step time is scaled linearly to the config's batch for the projection (said in the table).
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from esssm.budget import sweep_budgets
from esssm.files import atomic_write_text
from esssm.lab.progress import PhaseProgress
from esssm.model import count_parameters

REPO = Path(__file__).resolve().parents[2]
# Data-side overrides that make each task read the generated sample instead of the real set.
SAMPLE_ARGS = {"scifar": {"val_size": 8},
               "lm": {"hf_dataset": None, "python_stdlib": True, "max_bytes": 2_000_000}}


# ----------------------------------------------------------------------------- the probe


class SmokeProbe(L.Callback):
    """Times optimizer steps, evaluates the first validation batch at every budget (or the
    paper's, `budgets=None`), and fails naming the config on any non-finite loss or logit.

    Writes {"params", "step_seconds" (one per optimizer step), "budgets", "peak_memory_mb",
    "memory_kind"} to `out` at the end of fit.
    """

    def __init__(self, name: str, out: str, budgets: list[int] | str | None = "all") -> None:
        super().__init__()
        self.name, self.out, self.budgets_arg = name, Path(out), budgets
        self.step_seconds: list[float] = []
        self.checked: list[Any] = []
        self._start = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """2 optimizer steps and 1 validation batch, set here as ints: on the command line
        `--trainer.limit_val_batches=1` parses as 1.0, which Lightning reads as 100%."""
        trainer.limit_train_batches = 2 * trainer.accumulate_grad_batches
        trainer.limit_val_batches = 1

    def _sync(self, pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def _fail(self, what: str) -> None:
        raise FloatingPointError(f"smoke FAILED for {self.name}: {what}")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx % trainer.accumulate_grad_batches == 0:
            self._start = self._sync(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not torch.isfinite(loss).all():
            self._fail(f"non-finite training loss {loss.item()} at step {trainer.global_step}")
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.step_seconds.append(self._sync(pl_module) - self._start)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if trainer.sanity_checking or self.checked:
            return
        self.checked = sweep_budgets(pl_module.k_max, self.budgets_arg, "--smoke-budgets")
        with torch.no_grad():
            for k in self.checked:
                logits = pl_module.evaluate(batch, k)
                if not torch.isfinite(logits).all():
                    self._fail(f"non-finite logits at budget {k}")
                _, loss, _ = pl_module.example_stats(batch, logits)
                if not torch.isfinite(loss).all():
                    self._fail(f"non-finite validation loss at budget {k}")

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self.step_seconds or not self.checked:
            self._fail("fit ended before 2 optimizer steps and a validation batch ran")
        cuda = pl_module.device.type == "cuda"
        peak = (torch.cuda.max_memory_allocated(pl_module.device) if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        record = {"params": count_parameters(pl_module.model), "step_seconds": self.step_seconds,
                  "budgets": [k if k is not None else "full" for k in self.checked],
                  "peak_memory_mb": peak / 2**20, "memory_kind": "GPU max allocated" if cuda else "peak RSS"}
        atomic_write_text(self.out, json.dumps(record))


# ----------------------------------------------------------------------------- one config


def config_facts(config: Path) -> dict[str, Any]:
    """Batch, accumulation, epochs (-1: no limit), max_steps (-1: none), k_max, the byte LM's cached
    evaluation segments, sequence length and the real data set's training examples (the
    datamodule's) of a config."""
    from esssm.lab.loading import load_datamodule

    raw, datamodule = yaml.safe_load(config.read_text()), load_datamodule(config)
    data = raw["data"]["init_args"]
    return {"batch": data["batch_size"], "accumulate": raw["trainer"].get("accumulate_grad_batches", 1),
            "epochs": raw["trainer"]["max_epochs"], "max_steps": raw["trainer"].get("max_steps", -1),
            "k_max": raw["model"]["backbone"]["init_args"].get("k_max"), "eval_segments": data.get("eval_segments"),
            **{fact: getattr(datamodule, fact) for fact in ("seq_len", "train_examples")}}


def full_run_steps(facts: dict[str, Any]) -> int:
    """Optimizer steps of the full run: epochs x batches per epoch of the real data / accumulation,
    or max_steps where that comes first (as Lightning stops)."""
    limits = [facts["max_steps"]] if facts.get("max_steps", -1) != -1 else []
    if facts["epochs"] != -1:
        batches = math.ceil(facts["train_examples"] / facts["batch"])
        limits.append(facts["epochs"] * math.ceil(batches / facts["accumulate"]))
    if not limits:
        raise ValueError("the config sets neither max_epochs nor max_steps, so the run never ends")
    return min(limits)


def fit_arguments(config: Path, data_dir: Path | None, task: str, batch: int, work: Path,
                  probe_out: Path, width: tuple[int, int] | None = None, budgets: str = "all") -> list[str]:
    """`esssm fit` arguments: the config plus the smoke's overrides (data, 2 steps, batch, probe).

    budgets: "all" (the probe evaluates 1..k_max) or "paper" (the paper's evaluation budgets plus
    1 and k_max: about a fifth of the cost, for slow machines).
    """
    if budgets not in ("all", "paper"):
        raise ValueError(f"smoke budgets must be 'all' or 'paper', got {budgets!r}")
    facts = config_facts(config)
    data = {"batch_size": batch, "eval_batch_size": batch, **SAMPLE_ARGS.get(task, {})}
    if data_dir is not None:
        data["data_dir"] = str(data_dir)
    if facts["eval_segments"]:  # the sample text is far shorter than the real evaluation cache
        data["eval_segments"] = batch
    args = [
        "fit", "--config", str(config),
        "--trainer.max_steps=2", "--trainer.num_sanity_val_steps=0",
        "--trainer.val_check_interval=1.0", "--trainer.check_val_every_n_epoch=1",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={work}",
        f"--trainer.logger.init_args.save_dir={work / 'runs'}",
        *(f"--data.init_args.{key}={'null' if value is None else value}" for key, value in data.items()),
        "--trainer.callbacks+=esssm.lab.smoke.SmokeProbe",
        f"--trainer.callbacks.name={config.relative_to(REPO) if config.is_relative_to(REPO) else config}",
        f"--trainer.callbacks.out={probe_out}",
        f"--trainer.callbacks.budgets={'all' if budgets == 'all' else 'null'}",
    ]
    if facts["k_max"] is not None:  # the probe sweeps every budget: the config's own sweep only k_max
        args.append(f"--sweep.val_budgets=[{facts['k_max']}]")
    if width is not None:
        args += [f"--model.backbone.init_args.d_model={width[0]}", f"--model.backbone.init_args.n_layers={width[1]}"]
    return args


def run_config(config: Path, task: str, data_dir: Path | None, batch: int, in_process: bool = False,
               width: tuple[int, int] | None = None, budgets: str = "all") -> dict[str, Any]:
    """Smoke one config (in its own process unless in_process); its probe record, or raise."""
    with tempfile.TemporaryDirectory(prefix="esssm-smoke-") as folder:
        work = Path(folder)
        probe_out = work / "probe.json"
        args = fit_arguments(config, data_dir, task, batch, work, probe_out, width, budgets)
        start = time.time()
        if in_process:
            from esssm.lab.cli import main

            main(args)
        else:
            done = subprocess.run([sys.executable, "-m", "esssm", *args], cwd=REPO, capture_output=True, text=True)
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
                raise RuntimeError(f"smoke FAILED for {config} (exit {done.returncode}):\n{tail}")
        record = json.loads(probe_out.read_text())
    return {**record, "wall_seconds": time.time() - start}


# ----------------------------------------------------------------------------- the table


def projection_row(task: str, model: str, config: Path, record: dict[str, Any], batch: int, device: str) -> dict:
    """One smoke.md row: s/step (the 2nd step: the 1st pays one-off allocation), scaled to the
    config's batch when the smoke ran at a smaller one, and the projected full-run hours."""
    facts = config_facts(config)
    measured = record["step_seconds"][-1]
    scale = facts["batch"] / batch
    steps = full_run_steps(facts)
    return {"task": task, "model": model, "seq_len": facts["seq_len"], "params": record["params"],
            "batch": batch, "config_batch": facts["batch"], "accumulate": facts["accumulate"],
            "s_per_step": measured, "s_per_step_at_config_batch": measured * scale,
            "peak_memory_mb": record["peak_memory_mb"], "memory_kind": record["memory_kind"],
            "budgets_checked": len(record["budgets"]), "full_run_steps": steps,
            "projected_hours": steps * measured * scale / 3600, "device": device,
            "load_average": os.getloadavg()[0]}


def table_line(r: dict[str, Any]) -> str:
    load = f"{r['load_average']:.1f}" if "load_average" in r else "-"
    return (f"| {r['task']}/{r['model']} | {r['seq_len']} | {r['params'] / 1e6:.2f}M | {r['batch']} "
            f"({r['config_batch']}x{r['accumulate']}) | {r['s_per_step']:.2f} | "
            f"{r['s_per_step_at_config_batch']:.2f} | {r['peak_memory_mb']:.0f} ({r['memory_kind']}) | "
            f"{r['budgets_checked']} | {r['full_run_steps']:,} | {r['projected_hours']:,.1f} | {load} |")


def smoke_table(rows: list[dict[str, Any]], failures: list[str], device: str, command: str) -> str:
    scaled = any(r["batch"] != r["config_batch"] for r in rows)
    lines = [
        "# Smoke of the full profile", "",
        f"`{command}` on {device}. Each config: its real sequence length and width, 2 optimizer steps "
        "and one validation batch evaluated at the budgets counted in 'budgets checked' (all finite).", "",
        "s/step is the second optimizer step (the first pays one-off allocation)."
        + (" The smoke ran at a smaller batch than the configs: the step time is scaled linearly to "
           "the config's batch (column 'at config batch'), and the projection uses that scaled time."
           if scaled else ""),
        "Projected = optimizer steps of the full run (epochs x real training-set size / batch / "
        "accumulation) x s/step; validation and test sweeps are not included. Load avg: the "
        "machine's 1-minute load average when the config finished (other jobs slow it down).", "",
        "| config | L | params | batch (config) | s/step | s/step at config batch | peak memory MB | "
        "budgets checked | full-run steps | projected hours | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [table_line(r) for r in rows]
    if rows:
        total = sum(r["projected_hours"] for r in rows)
        lines += ["", f"Total projected: {total:,.0f} device-hours for {len(rows)} configs."]
    if failures:
        lines += ["", "## FAILED", "", *[f"- {f}" for f in failures]]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def write_samples(task: str, folder: Path, count: int) -> Path | None:
    """The task's sample data in its release format (kept when already there); None for the LM."""
    from datamodules.samples import WRITERS

    if task not in WRITERS:
        return None
    done = folder / ".complete"
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        WRITERS[task](folder, count)
        done.touch()
    return folder


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({len(os.sched_getaffinity(0))} cores, {torch.get_num_threads()} torch threads)"


def earlier_rows(path: Path, device: str, smoke_batch: int) -> list[dict[str, Any]]:
    """Rows of an earlier smoke on the same device and batch (a rerun adds to them, e.g. by --models)."""
    if not path.exists():
        return []
    gpu = torch.cuda.is_available()
    return [r for r in json.loads(path.read_text())
            if r["device"] == device and (gpu or r["batch"] == smoke_batch)]


def smoke_one(task: str, model: str, config: Path, out: Path, smoke_batch: int, budgets: str, device: str,
              rows: list[dict[str, Any]], failures: list[str], say: Callable[[str], None]) -> None:
    """Smoke one config unless an earlier smoke kept its row; adds its row or its failure."""
    if any((r["task"], r["model"]) == (task, model) for r in rows):
        say(f"[smoke] {task}/{model}: kept from {out / 'results' / 'smoke.json'}")
        return
    facts = config_facts(config)
    batch = facts["batch"] if torch.cuda.is_available() else smoke_batch
    data_dir = write_samples(task, out / "smoke" / "data" / task, 2 * batch * facts["accumulate"] + 2)
    say(f"[smoke] {task}/{model}: L={facts['seq_len']}, batch {batch}")
    try:
        record = run_config(config, task, data_dir, batch, budgets=budgets)
    except (RuntimeError, FloatingPointError) as error:
        say(str(error))
        failures.append(f"{task}/{model}: {str(error).splitlines()[0]}")
        return
    row = projection_row(task, model, config, record, batch, device)
    rows.append(row)
    say(f"[smoke] {task}/{model}: {row['s_per_step']:.2f} s/step, {row['peak_memory_mb']:.0f} MB, "
        f"projected {row['projected_hours']:,.1f} h ({record['wall_seconds']:.0f} s wall)")


def run(plans: list[tuple[str, str, Path]], out: Path, smoke_batch: int, command: str, budgets: str = "all") -> int:
    """Smoke every (task, model, config); write out/results/smoke.md; 1 if any config failed.

    Configs already in out/results/smoke.json (same device and batch) are kept, not rerun:
    delete that file to measure them again.
    """
    device = device_name()
    rows, failures = earlier_rows(out / "results" / "smoke.json", device, smoke_batch), []
    with PhaseProgress("smoke", len(plans), "configs", sys.stdout, interval=0) as progress:
        for task, model, config in plans:
            smoke_one(task, model, config, out, smoke_batch, budgets, device, rows, failures, progress.say)
            atomic_write_text(out / "results" / "smoke.md", smoke_table(rows, failures, device, command))
            atomic_write_text(out / "results" / "smoke.json", json.dumps(rows, indent=1))
            progress.advance()
    atomic_write_text(out / "results" / "smoke.md", smoke_table(rows, failures, device, command))
    print(f"\nsmoke table: {out / 'results' / 'smoke.md'}")
    if failures:
        print("smoke FAILED for:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


def plans_for(conf_dir: Path, tasks: list[str], models: list[str]) -> list[tuple[str, str, Path]]:
    """(task, model, config) for every config that exists under conf_dir/<task>/<model>.yaml."""
    return [(t, m, conf_dir / t / f"{m}.yaml") for t in tasks for m in models if (conf_dir / t / f"{m}.yaml").exists()]
