"""`./reproduce.sh --launcher local|slurm`: every pending (task, model, seed) run as a submitit job.

The runs, their folders, resume (last.ckpt, the fit.lock run lock), evaluation and tables stay
reproduce's; this module only decides where each run's `esssm fit` process runs. `slurm` submits
one job array through sbatch: a job per run, a task per GPU (Lightning's SLURM environment runs
the DDP ranks and, on the time-limit signal, saves a checkpoint and requeues the job). `local`
runs the same jobs as local processes through submitit's LocalExecutor, `--jobs` at a time.
Each job's id is kept in <out>/launch/jobs.json, so `--status` reads every run's state later
and a rerun attaches to the jobs still queued or running instead of submitting them again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

try:  # the `launch` extra; the default in-process runner does without it
    import submitit
    from submitit.core.job_environment import JobEnvironment
    from submitit.core.utils import JobPaths
except ImportError:
    submitit = None

from esssm.files import atomic_write_text
from esssm.lab import reproduce
from esssm.lab.progress import ProgressBoard, describe, read_record
from esssm.lab.reproduce import Run
from esssm.lab.reproduce_cli import DEFAULT_MINUTES
from esssm.train.cli import LOCK_FILE, _alive

SLURM_OPTIONS = ("slurm_partition", "slurm_account", "slurm_qos", "gpus_per_run", "cpus_per_run", "mem", "max_running")
POLL_S = 1.0
ATTEMPT_FILE = "slurm_attempt.json"  # in a run folder: the SLURM job (and host) that last trained it
# sacct states of a job that may still train; every other state without finished.json is a failure.
SLURM_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "RESIZING", "SUSPENDED", "STAGE_OUT"}
SLURM_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "READY", "UNKNOWN"}
Plan = tuple[Run, dict[str, Any]]


def check_arguments(args: argparse.Namespace) -> int:
    """The run's devices under the chosen launcher; refuses options that would be ignored."""
    if args.time is not None and args.launcher == "inprocess":
        raise SystemExit("--time only applies to --launcher local or slurm")
    if submitit is None and (args.launcher != "inprocess" or args.status):
        raise SystemExit("--launcher local|slurm and --status need submitit: pip install -e '.[launch]'")
    given = [f"--{name.replace('_', '-')}" for name in SLURM_OPTIONS if getattr(args, name) is not None]
    if given and args.launcher != "slurm":
        raise SystemExit(f"{', '.join(given)} only apply to --launcher slurm (got --launcher {args.launcher})")
    if args.status and args.collect:
        raise SystemExit("--status and --collect are separate steps; give one of them")
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if args.launcher == "slurm" and not (args.status or args.collect) and missing:
        raise SystemExit(f"--launcher slurm: there is no `{'` or `'.join(missing)}` on this machine's PATH, so no "
                         "SLURM cluster to submit to. Run this on the cluster's login node, or use --launcher local "
                         "(submitit's local executor) or the default in-process runner.")
    if args.launcher == "slurm" and args.gpus_per_run is not None:
        if args.devices not in (1, args.gpus_per_run):
            raise SystemExit(f"--devices {args.devices} and --gpus-per-run {args.gpus_per_run} disagree; "
                             "under --launcher slurm give --gpus-per-run alone")
        return args.gpus_per_run
    return args.devices


# ----------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class FitJob:
    """One run's training as submitit pickles and calls it: reproduce's `train` (fit output in
    <run>/fit.log, finished.json on success). Under SLURM it runs on each of the run's tasks."""

    run: Run
    overrides: dict[str, Any]
    devices: int
    extra: tuple[str, ...]
    threads: int | None = None
    slurm: bool = False

    def __call__(self) -> None:
        ok = self._slurm_task() if self.slurm else self._train(list(self.extra))
        if not ok:
            raise RuntimeError(f"{self.run.label}: esssm fit failed; its output is in {self.run.log_dir / 'fit.log'}")

    def _train(self, extra: list[str]) -> bool:
        return reproduce.train(self.run, self.overrides, self.devices, extra, self.threads, ProgressBoard(1, 1))

    def _slurm_task(self) -> bool:
        """Train as one task of the run's SLURM job. The fit's Lightning handles the preemption
        signal (saves hpc_ckpt_N.ckpt, `scontrol requeue`); this process only notes it, and after
        the fit stops it waits for SLURM to end this attempt, so the attempt records no result."""
        env = JobEnvironment()
        requeued: list[int] = []
        signal.signal(requeue_signal(), lambda signum, frame: requeued.append(signum))
        extra = [*self.extra, *slurm_fit_arguments(self.run), *hpc_resume(self.run)]
        if env.global_rank == 0:
            release_stale_lock(self.run, str(env.job_id), socket.gethostname())
            ok = self._train(extra)
        else:  # the other DDP ranks: the same command, their output beside fit.log
            log = self.run.log_dir / f"fit.rank{env.global_rank}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a") as stream:
                command = reproduce.fit_command(self.run, self.overrides, self.devices, extra)
                code = subprocess.run(command, cwd=reproduce.REPO, stdout=stream, stderr=subprocess.STDOUT).returncode
            ok = code == 0
        while requeued:
            print(f"{self.run.label}: requeued on the preemption signal; waiting for SLURM to stop this attempt",
                  flush=True)
            time.sleep(60)
        return ok


def requeue_signal() -> signal.Signals:
    """The signal submitit asks sbatch to send before the time limit (USR2 unless
    SUBMITIT_PREEMPT_SIGNAL names another)."""
    return getattr(signal, f"SIG{JobEnvironment.USR_SIG}")


def slurm_fit_arguments(run: Run) -> list[str]:
    """Lightning's SLURM environment with auto-requeue on the signal submitit asks sbatch to send
    (`--signal USR2@90`), and the run folder as default_root_dir, where its hpc checkpoint goes."""
    plugin = {"class_path": "lightning.pytorch.plugins.environments.SLURMEnvironment",
              "init_args": {"auto_requeue": True, "requeue_signal": requeue_signal().name}}
    return [f"--trainer.plugins={json.dumps(plugin)}", f"--trainer.default_root_dir={run.log_dir}"]


def hpc_resume(run: Run) -> list[str]:
    """`--ckpt_path=hpc` when a requeue saved a checkpoint newer than last.ckpt (Lightning takes
    the highest hpc_ckpt_N.ckpt in default_root_dir), else nothing: reproduce resumes from last."""
    hpc = max(run.log_dir.glob("hpc_ckpt_*.ckpt"), key=lambda p: p.stat().st_mtime, default=None)
    last = run.ckpt_dir / "last.ckpt"
    if hpc is not None and (not last.exists() or hpc.stat().st_mtime > last.stat().st_mtime):
        return ["--ckpt_path=hpc"]
    return []


def release_stale_lock(run: Run, job_id: str, host: str) -> None:
    """Remove a fit.lock left by an earlier attempt of this same SLURM job (SLURM ended that
    attempt before requeueing it, so its fit is gone even when its node is another one); any other
    lock stays for the fit to respect. Then record this attempt."""
    attempt, lock = run.log_dir / ATTEMPT_FILE, run.log_dir / LOCK_FILE
    earlier = json.loads(attempt.read_text()) if attempt.exists() else {}
    holder = lock.read_text().split() if lock.exists() else []
    if earlier.get("job_id") == job_id and len(holder) == 2 and holder[1] == earlier.get("host"):
        print(f"{run.label}: removing {lock}, left by the earlier attempt of SLURM job {job_id} on {holder[1]}",
              flush=True)
        lock.unlink()
    atomic_write_text(attempt, json.dumps({"job_id": job_id, "host": host}))


# ----------------------------------------------------------------------------- submitting


def launch_folder(out: Path) -> Path:
    return out / "launch"


def make_executor(launcher: str, folder: Path, args: argparse.Namespace, devices: int) -> submitit.Executor:
    """submitit's executor with the run's resources (`check_arguments` checked them)."""
    executor = submitit.AutoExecutor(folder / "submitit", cluster=launcher)
    minutes = args.time or DEFAULT_MINUTES
    if launcher == "local":
        executor.update_parameters(timeout_min=minutes, gpus_per_node=devices if torch.cuda.is_available() else 0)
        return executor
    gpus = args.gpus_per_run or devices
    tasks = gpus  # one process per GPU: Lightning reads the SLURM ranks
    optional = {"slurm_partition": args.slurm_partition, "slurm_account": args.slurm_account,
                "slurm_qos": args.slurm_qos, "mem_gb": args.mem, "slurm_array_parallelism": args.max_running,
                "cpus_per_task": args.cpus_per_run and max(1, args.cpus_per_run // tasks)}
    executor.update_parameters(
        name="esssm", timeout_min=minutes, nodes=1, tasks_per_node=tasks, gpus_per_node=gpus,
        slurm_additional_parameters={"requeue": True},
        **{key: value for key, value in optional.items() if value is not None},
    )
    return executor


def read_jobs(folder: Path) -> dict[str, dict[str, str]]:
    """{run label: {"launcher", "job_id", "folder"}} of the jobs submitted so far."""
    path = folder / "jobs.json"
    return json.loads(path.read_text()) if path.exists() else {}


def record_jobs(folder: Path, launcher: str, submitted: dict[Run, submitit.Job]) -> None:
    jobs = read_jobs(folder)
    for run, job in submitted.items():
        jobs[run.label] = {"launcher": launcher, "job_id": str(job.job_id), "folder": str(job.paths.folder)}
    atomic_write_text(folder / "jobs.json", json.dumps(jobs, indent=1))


def job_state(run: Run, record: dict[str, str] | None, job: submitit.Job | None = None) -> str:
    """done | pending | running | failed | not submitted, from the run's finished.json and
    submitit's records (its result file, the local process, sacct), never unpickling them.
    job: the submitit job when this process submitted it (a local one is polled, so reaped)."""
    if run.finished.exists():
        return "done"
    if record is None:
        return "not submitted"
    if JobPaths(record["folder"], record["job_id"]).result_pickle.exists():
        return "failed"  # ended (the result file is written last) without finishing training
    if record["launcher"] == "local":
        alive = not job.done() if job is not None else _alive(int(record["job_id"]))
        return "running" if alive else "failed"
    state = (job or submitit.SlurmJob(record["folder"], record["job_id"])).state.split()[0]
    return "running" if state in SLURM_RUNNING else "pending" if state in SLURM_PENDING else "failed"


def job_logs(run: Run, record: dict[str, str]) -> str:
    paths = JobPaths(record["folder"], record["job_id"])
    return f"job {record['job_id']} ({record['launcher']}); fit log {run.log_dir / 'fit.log'}; job log {paths.stderr}"


def tail(path: Path, lines: int = 20) -> str:
    return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-lines:]) if path.exists() else ""


def train_all(args: argparse.Namespace, plans: list[Plan], extra: list[str]) -> set[Run]:
    """Train every run as a submitit job, with reproduce's live progress; returns the finished
    runs. A failed job stops no other; its log's tail and paths are printed."""
    devices = check_arguments(args)
    folder = launch_folder(args.out.resolve())
    todo, live = sort_runs(plans, read_jobs(folder))
    executor = make_executor(args.launcher, folder, args, devices)
    slurm = args.launcher == "slurm"
    runs = len(todo) + len(live)
    workers, threads = (runs, None) if slurm else reproduce.parallel_plan(args.jobs, runs)
    failed: list[str] = []
    with ProgressBoard(runs, workers, interval=args.progress_every) as board:
        for run in live:
            board.start(run.label, run.progress)
        try:
            while todo or live:
                room = max(0, workers - len(live))
                if todo and room:
                    batch, todo = todo[:room], todo[room:]
                    jobs = [FitJob(run, overrides, devices, tuple(extra), threads, slurm) for run, overrides in batch]
                    live.update(submit(executor, folder, args.launcher, jobs, board))
                records = read_jobs(folder)
                for run, handle in list(live.items()):
                    state = job_state(run, records[run.label], handle)
                    if state not in ("pending", "running"):
                        del live[run]
                        board.finish(run.label, ok=state == "done")
                        if state != "done":
                            failed.append(report_failure(run, records[run.label], board))
                time.sleep(POLL_S if live or todo else 0)
        except KeyboardInterrupt:
            raise SystemExit("stopped waiting; submitted jobs that still run keep running: see them with the same "
                             "command and --status, and rerun it (or --collect) once they are done") from None
    if failed:
        print("FAILED jobs:\n  " + "\n  ".join(failed), flush=True)
    return finished_runs(plans)


def sort_runs(plans: list[Plan], records: dict[str, dict[str, str]]) -> tuple[list[Plan], dict[Run, None]]:
    """(the runs to submit, the runs whose earlier job is still queued or running); finished runs
    are only named."""
    todo, live = [], {}
    for run, overrides in plans:
        state = job_state(run, records.get(run.label))
        if state == "done":
            print(f"[{run.label}] finished earlier: {run.ckpt_dir}", flush=True)
        elif state in ("pending", "running"):
            print(f"[{run.label}] attaching to its {state} {job_logs(run, records[run.label])}", flush=True)
            live[run] = None
        else:
            todo.append((run, overrides))
    return todo, live


def submit(executor: submitit.Executor, folder: Path, launcher: str, jobs: list[FitJob],
           board: ProgressBoard) -> dict[Run, submitit.Job]:
    """Submit the jobs together (a job array under SLURM) and record their ids."""
    with executor.batch():
        handles = [executor.submit(job) for job in jobs]
    submitted = {job.run: handle for job, handle in zip(jobs, handles)}
    record_jobs(folder, launcher, submitted)
    records = read_jobs(folder)
    for run in submitted:
        board.say(f"[{run.label}] submitted as {job_logs(run, records[run.label])}")
        board.start(run.label, run.progress)
    return submitted


def report_failure(run: Run, record: dict[str, str], board: ProgressBoard) -> str:
    """Print the tail of the run's fit log (or of the job's log when the fit never started) and
    where both are; returns the run and its logs, for the final list."""
    board.say(tail(run.log_dir / "fit.log") or tail(JobPaths(record["folder"], record["job_id"]).stderr))
    board.say(f"[{run.label}] FAILED: {job_logs(run, record)}")
    return f"{run.label} ({job_logs(run, record)})"


# ----------------------------------------------------------------------------- status and collect


def print_status(runs: list[Run], out: Path) -> int:
    """One line per run: its state, the progress of a running one, the logs of a failed one."""
    records = read_jobs(launch_folder(out))
    for run in runs:
        record = records.get(run.label)
        state = job_state(run, record)
        if state == "done":
            print(f"{run.label}: done ({run.ckpt_dir})")
        elif state == "not submitted":
            print(f"{run.label}: not submitted")
        elif state == "running":
            print(f"{describe(run.label, read_record(run.progress))} [running, {job_logs(run, record)}]")
        else:
            print(f"{run.label}: {state}, {job_logs(run, record)}")
    sys.stdout.flush()
    return 0


def finished_runs(plans: list[Plan]) -> set[Run]:
    """--collect: the runs with a finished checkpoint, nothing trained."""
    return {run for run, _ in plans if run.finished.exists()}
