"""`./reproduce.sh`: train every (task, model, seed) run, sweep its budgets on the test split, and
write the paper's tables (mean ± std over seeds, markdown + CSV) and budget-curve PNGs.

Each run trains through the same `esssm fit --config conf/...` a user would type, in its own
process, with its output in fit.log and one live progress line here. A run whose
`finished.json` exists is not retrained; an interrupted one resumes from its last checkpoint.
Tasks whose data folder is missing are reported and skipped. The command line is parsed before
this module (and torch) is imported: esssm/lab/reproduce_cli.py.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from esssm.budget import sweep_budgets
from esssm.files import atomic_write_text
from esssm.lab.progress import ProgressBoard, duration, evaluation_guess, read_record, remaining_evaluation
from esssm.lab.reproduce_cli import QUICK_LISTOPS, REPO, TASKS
from esssm.lab.tables import ABLATION_ONLY, NoResultsError, write_curves, write_tables

BASELINES = ("transformer", "mamba", "mamba2", "s4d", "arstu")
PROFILES = {
    "quick": {"conf": "conf/quick", "tasks": ("listops",), "models": ("esssm", "fixed", "transformer")},
    "full": {"conf": "conf", "tasks": (*TASKS, "lm"), "models": ("esssm", "fixed", *BASELINES, *ABLATION_ONLY)},
}


@dataclass(frozen=True)
class Run:
    task: str
    model: str
    config: Path
    out: Path
    seed: int = 0

    @property
    def label(self) -> str:
        return f"{self.task}/{self.model}/seed{self.seed}"

    @property
    def version(self) -> str:
        return f"seed{self.seed}"

    @property
    def log_dir(self) -> Path:
        return self.out / "runs" / self.task / self.model / self.version

    @property
    def ckpt_dir(self) -> Path:
        return self.log_dir / "checkpoints"

    @property
    def finished(self) -> Path:
        return self.ckpt_dir / "finished.json"

    @property
    def progress(self) -> Path:
        return self.log_dir / "progress.json"

    @property
    def result(self) -> Path:
        return self.out / "results" / self.task / self.model / f"{self.version}.json"


# ----------------------------------------------------------------------------- data


def generate_quick_listops(folder: Path, train_size: int) -> None:
    """Generated ListOps for the quick profile; kept when already there."""
    from datamodules.listops_generator import generate_dataset

    if all((folder / f"basic_{s}.tsv").exists() for s in ("train", "val", "test")):
        return
    sizes = {"train": train_size, "val": max(32, train_size // 8), "test": max(32, train_size // 8)}
    print(f"generating ListOps ({sizes}) into {folder}", flush=True)
    q = QUICK_LISTOPS
    generate_dataset(folder, sizes, q["min_len"], q["max_len"], 10, 10, seed=0, overwrite=True)  # seeded: same data


def data_overrides(run: Run, profile: str) -> dict[str, Any]:
    if profile == "quick" and run.task == "listops":
        return {"data_dir": str(run.out / QUICK_LISTOPS["folder"])}
    return {}


def data_problem(run: Run, overrides: dict[str, Any]) -> str | None:
    """None when the run's data folder is usable, else the datamodule's own explanation."""
    from esssm.lab.loading import load_datamodule

    try:
        datamodule = load_datamodule(run.config, overrides)
        datamodule.prepare_data()
        datamodule.data_root()
    except (FileNotFoundError, ValueError) as error:
        return str(error)
    return None


# ----------------------------------------------------------------------------- training


def budget_seed(config: Path, seed: int) -> list[str]:
    """The seed of the budget sequence, for a config that trains under budget dropout (setting a
    key of a null `budget` would turn budget dropout on)."""
    model = (yaml.safe_load(Path(config).read_text()) or {}).get("model", {})
    return [] if "budget" in model and model["budget"] is None else [f"--model.budget.seed={seed}"]


def fit_command(run: Run, overrides: dict[str, Any], devices: int, extra: list[str]) -> list[str]:
    command = [
        sys.executable, "-m", "esssm", "fit", "--config", str(run.config),
        f"--trainer.logger.init_args.save_dir={run.out / 'runs'}",
        f"--trainer.logger.init_args.name={run.task}/{run.model}",
        f"--trainer.logger.init_args.version={run.version}",
        f"--trainer.devices={devices}",
        f"--seed_everything={run.seed}", f"--data.init_args.seed={run.seed}",
        *budget_seed(run.config, run.seed),
        "--trainer.callbacks+=esssm.lab.progress.ProgressFile", f"--trainer.callbacks.path={run.progress}",
        *(f"--data.init_args.{key}={value}" for key, value in overrides.items()),
    ]
    if (run.ckpt_dir / "last.ckpt").exists():
        command.append("--ckpt_path=last")  # an interrupted run resumes where it stopped
    elif run.log_dir.exists():
        command.append("--overwrite=true")  # a run that saved no checkpoint has nothing to resume
    return command + extra


def say(message: str) -> None:
    """One write per message, so lines from runs trained side by side never interleave."""
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def train(run: Run, overrides: dict[str, Any], devices: int, extra: list[str], threads: int | None,
          board: ProgressBoard) -> bool:
    """Train one run in its own process, its output in <log_dir>/fit.log and its progress on the
    board. threads: its CPU threads (runs trained side by side); None: torch's default."""
    if run.finished.exists():
        board.say(f"[{run.label}] finished earlier: {run.ckpt_dir}")
        return True
    command = fit_command(run, overrides, devices, extra)
    log = run.log_dir / "fit.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    threads_text = f"on {threads} CPU thread(s), " if threads else ""
    board.say(f"[{run.label}] training {threads_text}output in {log}")
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else {})}
    start = time.time()
    board.start(run.label, run.progress)
    with open(log, "a") as stream:
        # the full command, for the log's reader only; on a line of its own after a killed attempt's last line
        stream.write(("\n" if stream.tell() else "") + f"$ {shlex.join(command)}\n")
        stream.flush()
        code = subprocess.run(command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT).returncode
    if code == 0 and not (read_record(run.progress) or {}).get("done"):
        code = 1  # a fit stopped by a signal (SIGTERM) exits 0 without finishing training
    board.finish(run.label, ok=code == 0)
    if code != 0:
        board.say("".join(log.read_text().splitlines(keepends=True)[-20:]))
        board.say(f"[{run.label}] training FAILED; rerun to resume")
        return False
    atomic_write_text(run.finished, json.dumps({"seconds": round(time.time() - start, 1)}))
    return True


def parallel_plan(jobs: int | None, pending: int) -> tuple[int, int | None]:
    """(runs trained at once, CPU threads per run; None = torch's default).

    Default: one at a time when a GPU is visible. On a CPU, every pending run at once, up to two
    per core, each on an equal share of the cores (at least one thread): these small models gain
    little from a second thread, and single-threaded processes sharing cores never stall in
    OpenMP barriers, so 3 runs on 2 cores finish in about 1.5 run-times, not 2 or 3.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if jobs is None:
        jobs = 1 if torch.cuda.is_available() else min(max(pending, 1), 2 * cores)
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    return (1, None) if jobs == 1 else (jobs, max(1, cores // jobs))


def train_all(plans: list[tuple[Run, dict[str, Any]]], devices: int, extra: list[str], jobs: int | None,
              interval: float) -> set[Run]:
    """Train every run (side by side per `parallel_plan`) with live progress; returns those that
    trained. interval: seconds between plain progress lines when stdout is not a terminal."""
    pending = sum(not run.finished.exists() for run, _ in plans)
    workers, threads = parallel_plan(jobs, pending)
    with ProgressBoard(pending, workers, interval=interval) as board, ThreadPoolExecutor(workers) as pool:
        done = pool.map(lambda plan: train(*plan, devices, extra, threads, board), plans)
        return {run for (run, _), ok in zip(plans, list(done)) if ok}


# ----------------------------------------------------------------------------- evaluation


def best_checkpoint(run: Run) -> Path:
    best = sorted(run.ckpt_dir.glob("best-*.ckpt"), key=os.path.getmtime)
    return best[-1] if best else run.ckpt_dir / "last.ckpt"


def evaluate(run: Run, overrides: dict[str, Any], budgets: list[int] | str | None,
             reference_budgets: list[int] | None = None) -> dict[str, Any]:
    """Test-split accuracy at every budget, with active parameters and inference latency, and a
    progress line with an ETA (guessed from the run's validation sweeps until the first batch).
    The sweep is also logged to the run's TensorBoard folder (test/acc_vs_k: step = k; a model
    without a budget as a flat line over `reference_budgets`, the task's elastic budgets)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from esssm.lab.loading import load_datamodule, load_module
    from esssm.lab.sweep import run_sweep
    from esssm.model import count_parameters

    ckpt = best_checkpoint(run)
    module = load_module(ckpt).eval()
    datamodule = load_datamodule(run.config, overrides)
    logger = TensorBoardLogger(run.out / "runs", name=f"{run.task}/{run.model}", version=run.version,
                               default_hp_metric=False)
    rows = run_sweep(module, datamodule, budgets, split="test", output_dir=ckpt.parent, logger=logger,
                     reference_budgets=reference_budgets, progress=f"[{run.label}] ", stream=sys.stdout,
                     expected_s=evaluation_guess(read_record(run.progress)))
    batch = next(iter(datamodule.test_dataloader()))
    time_rows(module, batch, rows)
    return {
        "task": run.task, "model": run.model, "seed": run.seed, "checkpoint": str(ckpt),
        "params": count_parameters(module.eval_model), "k_max": module.k_max,
        "batch_size": int(batch["y"].shape[0]), "rows": rows,
    }


def time_rows(module: Any, batch: dict[str, Any], rows: list[dict[str, Any]], rounds: int = 5) -> None:
    """Adds each row's latency: the median ms of one forward pass of `batch` at its budget, all
    budgets timed in interleaved rounds in a pass of their own after the sweep, and the spread of
    those rounds (`latency_spread`; the tables mark a latency noisy above NOISY_SPREAD)."""
    from esssm.timing import interleaved_ms, spread

    calls = {row["budget"]: functools.partial(module.evaluate, batch, None if row["budget"] == "full" else row["budget"])
             for row in rows}
    with torch.no_grad():
        times = interleaved_ms(calls, rounds=rounds, warmup=1)
    for row in rows:
        row["latency_ms"], row["latency_spread"] = statistics.median(times[row["budget"]]), spread(times[row["budget"]])


def stored_result(run: Run, budgets) -> dict[str, Any] | None:
    """The run's stored test result when it is newer than the checkpoint and was swept at these
    budgets, else None."""
    if run.result.exists() and run.result.stat().st_mtime >= best_checkpoint(run).stat().st_mtime:
        stored = json.loads(run.result.read_text())
        wanted = ["full" if k is None else k for k in sweep_budgets(stored["k_max"], budgets)]
        if [row["budget"] for row in stored["rows"]] == wanted:
            return stored
    return None


def load_or_evaluate(run: Run, overrides: dict[str, Any], budgets, reference_budgets=None) -> dict[str, Any]:
    """The run's test result: the stored one (`stored_result`), else a new evaluation."""
    result = stored_result(run, budgets)
    if result is None:
        result = evaluate(run, overrides, budgets, reference_budgets)
        atomic_write_text(run.result, json.dumps(result, indent=1))
    return result


def task_budgets(runs: list[Run], budgets) -> dict[str, list[int]]:
    """task -> the test budgets of its elastic runs (where a Transformer draws its flat k line)."""
    found: dict[str, set[int]] = {}
    for run in runs:
        k_max = config_k_max(run.config)
        if k_max is not None:
            found.setdefault(run.task, set()).update(sweep_budgets(k_max, budgets))
    return {task: sorted(ks) for task, ks in found.items()}


def evaluate_all(plans: list[tuple[Run, dict[str, Any]]], trained: set[Run], budgets) -> dict[tuple[str, str], list[dict]]:
    """The test results of the trained runs, evaluated one at a time after all training (so the
    latencies are timed on an otherwise idle machine), each announced with the job's remaining
    ETA: the runs still to sweep, guessed from their validation sweeps or from those measured."""
    todo = [(run, overrides) for run, overrides in plans if run in trained]
    fresh = [stored_result(run, budgets) is None for run, _ in todo]
    guesses = [evaluation_guess(read_record(run.progress)) if new else 0.0 for (run, _), new in zip(todo, fresh)]
    references = task_budgets([run for run, _ in todo], budgets)
    results: dict[tuple[str, str], list[dict]] = {}
    measured: list[float] = []
    for i, (run, overrides) in enumerate(todo):
        if fresh[i]:
            eta = remaining_evaluation(guesses[i:], measured)
            print(f"[{run.label}] test evaluation {sum(fresh[:i + 1])}/{sum(fresh)}, job ETA {duration(eta)}", flush=True)
        start = time.monotonic()
        result = load_or_evaluate(run, overrides, budgets, references.get(run.task))
        if fresh[i]:
            measured.append(time.monotonic() - start)
        results.setdefault((run.task, run.model), []).append(result)
    return results


# ----------------------------------------------------------------------------- main


def select(text: str | None, default: tuple[str, ...]) -> list[str]:
    return list(default) if text is None else [s.strip() for s in text.split(",") if s.strip()]


def choose(option: str, text: str | None, default: tuple[str, ...], known: list[str], where: str) -> list[str]:
    """The names given to `option` (comma-separated; `default` when not given): distinct, and each
    one of `known` (found in `where`). Anything else stops the job before it trains or writes."""
    names = select(text, default)
    if not names:
        raise SystemExit(f"{option} is empty; choose from {','.join(known)}")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise SystemExit(f"{option}: no {', '.join(unknown)} in {where}; choose from {','.join(known)}")
    if len(set(names)) < len(names):
        raise SystemExit(f"{option} names a value twice: {text!r}")
    return names


def configs_in(folder: Path) -> list[str]:
    """The config names (YAML stems) in a folder, sorted."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def choose_tasks_and_models(args: argparse.Namespace, profile: dict[str, Any]) -> tuple[list[str], list[str]]:
    """--tasks among the profile's task folders and --models among their configs, both checked."""
    conf = REPO / profile["conf"]
    known_tasks = sorted(p.name for p in conf.iterdir() if p.is_dir() and configs_in(p))
    tasks = choose("--tasks", args.tasks, profile["tasks"], known_tasks, f"{conf}/")
    known_models = sorted({m for task in tasks for m in configs_in(conf / task)})
    models = choose("--models", args.models, profile["models"], known_models, f"the configs of {','.join(tasks)}")
    return tasks, models


def config_k_max(config: Path) -> int | None:
    """The full spectral budget of a config's backbone (None: a model without a budget)."""
    model = (yaml.safe_load(config.read_text()) or {}).get("model", {})
    return model.get("backbone", {}).get("init_args", {}).get("k_max")


def check_budgets(runs: list[Run], budgets: list[int] | str | None) -> None:
    """--budgets must fit every run's k_max, checked before anything trains."""
    for run in runs:
        try:
            sweep_budgets(config_k_max(run.config), budgets, "--budgets")
        except ValueError as error:
            raise SystemExit(f"{error} of {run.config}") from None


def parse_seeds(text: str) -> list[int]:
    """'0,1,2' -> [0, 1, 2]; a clear error for anything else."""
    try:
        seeds = [int(s) for s in select(text, ())]
    except ValueError:
        raise SystemExit(f"--seeds takes comma-separated non-negative integers such as 0,1,2; got {text!r}") from None
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds takes distinct non-negative integers such as 0,1,2; got {text!r}")
    return seeds


def report(results: dict[tuple[str, str], list[dict]], out: Path, profile: str) -> None:
    """Write the tables and curves, and print the tables with their paths."""
    tables, markdown = write_tables(results, out / "results", profile)
    curves = write_curves(results, out / "results")
    print(f"\n{markdown}")
    print(f"tables: {tables}\ncsv:    {out / 'results'}/table_*.csv")
    for path in curves:
        print(f"curve:  {path}")
    print(f"tensorboard --logdir {out / 'runs'}")


def run(args: argparse.Namespace, command: str) -> int:
    """The job of a parsed command line (esssm/lab/reproduce_cli.py); command: that line, for --smoke's report."""
    from esssm.lab import launch  # imports this module

    profile = PROFILES[args.profile]
    out = args.out.resolve()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    tasks, models = choose_tasks_and_models(args, profile)  # every check before anything trains or writes
    if args.smoke:
        from esssm.lab import smoke

        return smoke.run(smoke.plans_for(REPO / profile["conf"], tasks, models), out, args.smoke_batch, command,
                         args.smoke_budgets)
    seeds = parse_seeds(args.seeds)
    budgets = args.budgets or ("all" if args.profile == "quick" else None)
    runs = {task: [Run(task, m, REPO / profile["conf"] / task / f"{m}.yaml", out, seed)
                   for seed in seeds for m in models] for task in tasks}
    check_budgets([r for task_runs in runs.values() for r in task_runs if r.config.exists()], budgets)
    launch.check_arguments(args)
    if args.status:
        return launch.print_status([r for task_runs in runs.values() for r in task_runs], out)
    plans, skipped = [], []
    for task, task_runs in runs.items():
        missing = [str(r.config) for r in task_runs if not r.config.exists()]
        if missing:
            print(f"[{task}] no config {', '.join(sorted(set(missing)))}; skipping those models", flush=True)
            task_runs = [r for r in task_runs if r.config.exists()]
        if args.profile == "quick" and task == "listops":
            generate_quick_listops(out / QUICK_LISTOPS["folder"], args.data_size)
        problem = task_runs and data_problem(task_runs[0], data_overrides(task_runs[0], args.profile))
        if problem:
            print(f"[{task}] SKIPPED, data missing:\n{problem}\n", flush=True)
            skipped.append(task)
            continue
        plans += [(run, data_overrides(run, args.profile)) for run in task_runs]
    if args.collect:
        trained = launch.finished_runs(plans)
    elif args.launcher == "inprocess":
        trained = train_all(plans, args.devices, extra, args.jobs, args.progress_every)
    else:
        trained = launch.train_all(args, plans, extra)
    results = evaluate_all(plans, trained, budgets)
    failed = [run.label for run, _ in plans if run not in trained]
    if skipped:
        print(f"skipped for missing data: {', '.join(skipped)}")
    if failed:
        print(f"MISSING runs (not finished): {', '.join(failed)}" if args.collect
              else f"FAILED runs (rerun to resume): {', '.join(failed)}")
    try:
        report(results, out, args.profile)
    except NoResultsError as error:
        print(f"tables NOT written: {error}")
        return 1
    return 1 if failed else 0
