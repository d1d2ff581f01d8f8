"""`./reproduce.sh`: train every (task, model) run, sweep its budgets on the test split, and write
the paper's tables (markdown + CSV) and budget-curve PNGs.

Each run trains through the same `esssm fit --config conf/...` a user would type, in its own
process. A run whose `finished.json` exists is not retrained; an interrupted one resumes from
its last checkpoint. Tasks whose data folder is missing are reported and skipped.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from esssm.budget import curve_summary
from esssm.files import atomic_write, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
TASKS = ("listops", "text", "retrieval", "scifar", "pathfinder", "speech")
BASELINES = ("transformer", "mamba", "mamba2", "s4d", "arstu")
ABLATIONS = {  # Table C rows: config name -> label
    "esssm": "full ES-SSM",
    "esssm_nogate": "no gate (uniform weights)",
    "esssm_nodropout": "no budget dropout",
    "esssm_norms": "no RMS rescale",
}
PROFILES = {
    "quick": {"conf": "conf/quick", "tasks": ("listops",), "models": ("esssm", "fixed", "transformer")},
    "full": {"conf": "conf", "tasks": (*TASKS, "lm"), "models": ("esssm", "fixed", *BASELINES, *list(ABLATIONS)[1:])},
}
# The quick profile's ListOps: the LRA generator at short lengths (no download).
QUICK_LISTOPS = {"train": 4000, "val": 500, "test": 500, "min_len": 20, "max_len": 256}


@dataclass(frozen=True)
class Run:
    task: str
    model: str
    config: Path
    out: Path

    @property
    def log_dir(self) -> Path:
        return self.out / "runs" / self.task / self.model / "run"

    @property
    def ckpt_dir(self) -> Path:
        return self.log_dir / "checkpoints"

    @property
    def finished(self) -> Path:
        return self.ckpt_dir / "finished.json"

    @property
    def result(self) -> Path:
        return self.out / "results" / self.task / f"{self.model}.json"


# ----------------------------------------------------------------------------- data


def generate_quick_listops(folder: Path, train_size: int) -> None:
    """Generated ListOps for the quick profile; kept when already there."""
    from datamodules.listops import generate_dataset

    if all((folder / f"basic_{s}.tsv").exists() for s in ("train", "val", "test")):
        return
    sizes = {"train": train_size, "val": max(32, train_size // 8), "test": max(32, train_size // 8)}
    print(f"generating ListOps ({sizes}) into {folder}", flush=True)
    q = QUICK_LISTOPS
    generate_dataset(folder, sizes, q["min_len"], q["max_len"], 10, 10, seed=0, overwrite=True)  # seeded: same data


def data_overrides(run: Run, profile: str) -> dict[str, Any]:
    if profile == "quick" and run.task == "listops":
        return {"data_dir": str(run.out / "data" / "listops-quick")}
    return {}


def data_problem(run: Run, overrides: dict[str, Any]) -> str | None:
    """None when the run's data folder is usable, else the datamodule's own explanation."""
    from esssm.commands import load_datamodule

    try:
        datamodule = load_datamodule(run.config, overrides)
        datamodule.prepare_data()
        datamodule.data_root()
    except (FileNotFoundError, ValueError) as error:
        return str(error)
    return None


# ----------------------------------------------------------------------------- training


def fit_command(run: Run, overrides: dict[str, Any], devices: int, extra: list[str]) -> list[str]:
    command = [
        sys.executable, "-m", "esssm", "fit", "--config", str(run.config),
        f"--trainer.logger.init_args.save_dir={run.out / 'runs'}",
        f"--trainer.logger.init_args.name={run.task}/{run.model}",
        "--trainer.logger.init_args.version=run",
        f"--trainer.devices={devices}",
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


def train(run: Run, overrides: dict[str, Any], devices: int, extra: list[str], threads: int | None) -> bool:
    """Train one run in its own process. threads: its CPU threads, and its output goes to
    <log_dir>/fit.log (runs trained side by side); None: all threads, output to the terminal."""
    if run.finished.exists():
        say(f"[{run.task}/{run.model}] finished earlier: {run.ckpt_dir}")
        return True
    command = fit_command(run, overrides, devices, extra)
    say(f"[{run.task}/{run.model}] training: {' '.join(command)}")
    start = time.time()
    if threads is None:
        code = subprocess.run(command, cwd=REPO).returncode
    else:
        log = run.log_dir / "fit.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        say(f"[{run.task}/{run.model}] on {threads} CPU thread(s), output in {log}")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        with open(log, "a") as stream:
            code = subprocess.run(command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT).returncode
        if code != 0:
            say("".join(log.read_text().splitlines(keepends=True)[-20:]))
    if code != 0:
        say(f"[{run.task}/{run.model}] training FAILED; rerun to resume")
        return False
    seconds = round(time.time() - start, 1)
    atomic_write_text(run.finished, json.dumps({"seconds": seconds}))
    say(f"[{run.task}/{run.model}] trained in {seconds:.0f} s")
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


def train_all(plans: list[tuple[Run, dict[str, Any]]], devices: int, extra: list[str], jobs: int | None) -> set[Run]:
    """Train every run (side by side per `parallel_plan`); returns those that trained."""
    pending = sum(not run.finished.exists() for run, _ in plans)
    workers, threads = parallel_plan(jobs, pending)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = pool.map(lambda plan: train(*plan, devices, extra, threads), plans)
        return {run for (run, _), ok in zip(plans, list(done)) if ok}


# ----------------------------------------------------------------------------- evaluation


def best_checkpoint(run: Run) -> Path:
    best = sorted(run.ckpt_dir.glob("best-*.ckpt"), key=os.path.getmtime)
    return best[-1] if best else run.ckpt_dir / "last.ckpt"


def evaluate(run: Run, overrides: dict[str, Any], budgets: list[int] | str | None) -> dict[str, Any]:
    """Test-split accuracy at every budget, with active parameters and inference latency."""
    from esssm.commands import load_datamodule, load_task, run_sweep
    from esssm.model import count_parameters
    from esssm.timing import median_latency_ms

    ckpt = best_checkpoint(run)
    task = load_task(ckpt).eval()
    datamodule = load_datamodule(run.config, overrides)
    rows = run_sweep(task, datamodule, budgets, split="test", output_dir=ckpt.parent)
    batch = next(iter(datamodule.test_dataloader()))
    with torch.no_grad():
        for row in rows:
            budget = None if row["budget"] == "full" else row["budget"]
            row["latency_ms"] = median_latency_ms(lambda: task.evaluate(batch, budget), warmup=1, repeats=3)
    return {
        "task": run.task, "model": run.model, "checkpoint": str(ckpt),
        "params": count_parameters(task.eval_model), "k_max": task.k_max,
        "batch_size": int(batch["y"].shape[0]), "rows": rows,
    }


def load_or_evaluate(run: Run, overrides: dict[str, Any], budgets) -> dict[str, Any]:
    if run.result.exists() and run.result.stat().st_mtime >= best_checkpoint(run).stat().st_mtime:
        return json.loads(run.result.read_text())
    result = evaluate(run, overrides, budgets)
    atomic_write_text(run.result, json.dumps(result, indent=1))
    return result


# ----------------------------------------------------------------------------- tables


def classification(results: dict[tuple[str, str], dict]) -> dict[tuple[str, str], dict]:
    """The runs scored by accuracy (language models are scored in bits per byte: Table D)."""
    return {key: r for key, r in results.items() if "bpb" not in r["rows"][0]}


def full_row(result: dict[str, Any]) -> dict[str, Any]:
    return max(result["rows"], key=lambda r: -1 if r["budget"] == "full" else r["budget"])


def elastic_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Full-budget accuracy, smallest budget reaching 98% of it, and the area under the curve."""
    rows = [r for r in result["rows"] if r["budget"] != "full"]
    if not rows:
        return {"full": full_row(result)["acc"], "k98": None, "acc_k98": None, "auc": None}
    summary = curve_summary([r["budget"] for r in rows], [r["acc"] for r in rows])
    acc_k98 = next(r["acc"] for r in rows if r["budget"] == summary["k98"])
    return {**summary, "acc_k98": acc_k98}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def table_a(results: dict[tuple[str, str], dict]) -> tuple[str, list[dict]]:
    """Accuracy of every model on every task (elastic models also at their 98% budget)."""
    rows = []
    for (task, model), result in sorted(classification(results).items()):
        if model in list(ABLATIONS)[1:]:
            continue
        s = elastic_summary(result)
        rows.append({"task": task, "model": model, "params": result["params"], "acc_full": s["full"],
                     "k98": s["k98"], "acc_at_k98": s["acc_k98"]})
    lines = ["| task | model | params | test acc (full) | smallest k with >= 98% | acc at that k |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['task']} | {r['model']} | {r['params'] / 1e6:.2f}M | {pct(r['acc_full'])} | "
              f"{r['k98'] if r['k98'] is not None else '-'} | {pct(r['acc_at_k98'])} |" for r in rows]
    return "\n".join(lines), rows


def table_b(results: dict[tuple[str, str], dict]) -> tuple[str, list[dict]]:
    """ES-SSM per budget (fixed-budget spectral SSM beside it), active params, latency."""
    rows, lines = [], []
    results = classification(results)
    for task in sorted({t for t, _ in results}):
        elastic, fixed = results.get((task, "esssm")), results.get((task, "fixed"))
        if elastic is None:
            continue
        fixed_acc = {r["budget"]: r["acc"] for r in fixed["rows"]} if fixed else {}
        lines += [f"\n**{task}** (batch {elastic['batch_size']}, latency = median forward ms on this machine)\n",
                  "| k | ES-SSM acc | fixed-budget SSM acc | active params | latency ms |",
                  "|---:|---:|---:|---:|---:|"]
        for r in elastic["rows"]:
            row = {"task": task, "budget": r["budget"], "esssm_acc": r["acc"],
                   "fixed_acc": fixed_acc.get(r["budget"]), "active_params": r["active_params"],
                   "latency_ms": round(r["latency_ms"], 3)}
            rows.append(row)
            lines.append(f"| {r['budget']} | {pct(r['acc'])} | {pct(row['fixed_acc'])} | "
                         f"{r['active_params']:,} | {row['latency_ms']:.1f} |")
    return "\n".join(lines), rows


def table_d(results: dict[tuple[str, str], dict]) -> tuple[str, list[dict]]:
    """Byte-level language models: test bits per byte at every budget."""
    rows = [
        {"task": task, "model": model, "budget": r["budget"], "bpb": r["bpb"], "token_acc": r["acc"],
         "active_params": r["active_params"], "latency_ms": round(r["latency_ms"], 3)}
        for (task, model), result in sorted(results.items())
        for r in result["rows"]
        if "bpb" in r
    ]
    lines = ["| task | model | k | bits per byte | next-byte acc | active params | latency ms |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['task']} | {r['model']} | {r['budget']} | {r['bpb']:.3f} | {pct(r['token_acc'])} | "
              f"{r['active_params']:,} | {r['latency_ms']:.1f} |" for r in rows]
    return "\n".join(lines), rows


def table_c(results: dict[tuple[str, str], dict]) -> tuple[str, list[dict]]:
    """Ablations: full ES-SSM vs no gate, no budget dropout, no RMS rescale."""
    rows = []
    for (task, model), result in sorted(classification(results).items()):
        if model not in ABLATIONS:
            continue
        s = elastic_summary(result)
        small = min((r for r in result["rows"] if r["budget"] != "full"), key=lambda r: r["budget"], default=None)
        rows.append({"task": task, "variant": ABLATIONS[model], "acc_full": s["full"], "auc": s["auc"],
                     "k98": s["k98"], "smallest_k": small and small["budget"], "acc_smallest_k": small and small["acc"]})
    if len({r["variant"] for r in rows}) < 2:
        return "", []
    lines = ["| task | variant | acc (full) | mean acc over log k | k98 | acc at smallest k |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['task']} | {r['variant']} | {pct(r['acc_full'])} | {pct(r['auc'])} | {r['k98']} | "
              f"{pct(r['acc_smallest_k'])} (k={r['smallest_k']}) |" for r in rows]
    return "\n".join(lines), rows


def write_curves(results: dict[tuple[str, str], dict], folder: Path) -> list[Path]:
    from esssm.callbacks import plot_budget_curve

    import matplotlib.pyplot as plt

    paths = []
    for task in sorted({t for t, _ in results}):
        runs = {m: r for (t, m), r in sorted(results.items()) if t == task}
        curves = {m: r["rows"] for m, r in runs.items() if r["k_max"]}
        if not curves:
            continue
        references = {m: (r["params"], full_row(r)["acc"]) for m, r in runs.items() if not r["k_max"]}
        figure = plot_budget_curve(curves, title=f"{task}: test accuracy vs budget", references=references)
        path = folder / f"budget_curve_{task}.png"
        atomic_write(path, lambda tmp: figure.savefig(tmp, dpi=120, format="png"))
        plt.close(figure)
        paths.append(path)
    return paths


def write_tables(results: dict[tuple[str, str], dict], folder: Path, profile: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    sections = [f"# ES-SSM reproduction ({profile} profile)\n",
                "Test-split accuracy (%). Written by `./reproduce.sh`; raw numbers in the CSV files.\n"]
    for name, build, title in (("table_a", table_a, "Table A: accuracy per model and task"),
                               ("table_b", table_b, "Table B: accuracy per spectral budget"),
                               ("table_c", table_c, "Table C: ablations"),
                               ("table_d", table_d, "Table D: byte-level language modelling")):
        text, rows = build(results)
        if rows:
            sections += [f"\n## {title}\n", text, ""]
            write_csv(folder / f"{name}.csv", rows)
    path = folder / "tables.md"
    atomic_write_text(path, "\n".join(sections) + "\n")
    return path


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="./reproduce.sh", description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="profile", action="store_const", const="quick",
                      help="generated ListOps, small models, minutes on a CPU (default); "
                           "--tasks listops,lm adds a byte-level LM on the Python stdlib")
    mode.add_argument("--full", dest="profile", action="store_const", const="full",
                      help="the paper's five tasks at ~20M parameters (GPUs and the data sets)")
    parser.add_argument("--tasks", help=f"comma-separated subset of {','.join(TASKS)}")
    parser.add_argument("--models", help="comma-separated config names under conf/<task>/ (e.g. esssm,fixed)")
    parser.add_argument("--devices", type=int, default=1, help="devices per run (DDP when > 1)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs trained at once (default: 1 with a GPU; on a CPU all pending runs, "
                             "up to 2 per core, splitting the cores between them)")
    parser.add_argument("--out", type=Path, default=REPO, help="folder for runs/, results/ and data/")
    parser.add_argument("--data-size", type=int, default=QUICK_LISTOPS["train"],
                        help="training examples of the quick profile's generated ListOps")
    parser.add_argument("--budgets", default=None, help="budgets to evaluate: 'all', comma list, or the paper grid")
    parser.add_argument("extra", nargs=argparse.REMAINDER,
                        help="after --: extra `esssm fit` arguments for every run, e.g. -- --trainer.max_epochs=1")
    parser.set_defaults(profile="quick")
    return parser.parse_args(argv)


def select(text: str | None, default: tuple[str, ...]) -> list[str]:
    return default if text is None else [s.strip() for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    profile = PROFILES[args.profile]
    out = args.out.resolve()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    budgets = args.budgets if args.budgets in (None, "all") else [int(k) for k in args.budgets.split(",")]
    if budgets is None and args.profile == "quick":
        budgets = "all"
    plans, skipped = [], []
    for task in select(args.tasks, profile["tasks"]):
        runs = [Run(task, m, REPO / profile["conf"] / task / f"{m}.yaml", out)
                for m in select(args.models, profile["models"])]
        missing = [str(r.config) for r in runs if not r.config.exists()]
        if missing:
            print(f"[{task}] no config {', '.join(missing)}; skipping those models", flush=True)
            runs = [r for r in runs if r.config.exists()]
        if args.profile == "quick" and task == "listops":
            generate_quick_listops(out / "data" / "listops-quick", args.data_size)
        problem = runs and data_problem(runs[0], data_overrides(runs[0], args.profile))
        if problem:
            print(f"[{task}] SKIPPED, data missing:\n{problem}\n", flush=True)
            skipped.append(task)
            continue
        plans += [(run, data_overrides(run, args.profile)) for run in runs]
    trained = train_all(plans, args.devices, extra, args.jobs)
    # Evaluated one at a time after all training, so the latencies are measured on an idle machine.
    results = {(run.task, run.model): load_or_evaluate(run, overrides, budgets)
               for run, overrides in plans if run in trained}
    failed = [f"{run.task}/{run.model}" for run, _ in plans if run not in trained]
    tables = write_tables(results, out / "results", args.profile)
    curves = write_curves(results, out / "results")
    print(f"\ntables: {tables}\ncsv:    {out / 'results'}/table_*.csv")
    for path in curves:
        print(f"curve:  {path}")
    print(f"tensorboard --logdir {out / 'runs'}")
    if skipped:
        print(f"skipped for missing data: {', '.join(skipped)}")
    if failed:
        print(f"FAILED runs (rerun to resume): {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
