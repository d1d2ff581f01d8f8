"""./reproduce.sh --launcher: runs as submitit jobs (its local executor here; SLURM only as far as
it can be checked without a cluster: the sbatch script and the refusal where sbatch is absent)."""

import csv
import json
import shutil
import socket

import pytest
import torch

from esssm.checkpoints import read_checkpoint
from esssm.lab import launch, reproduce, reproduce_cli
from esssm.lab.reproduce import Run

# Two seeds of a tiny ES-SSM on 32 generated ListOps examples: one step per epoch, two epochs.
GRID = ["--quick", "--models", "esssm", "--seeds", "0,1", "--data-size", "32", "--budgets", "1,16",
        "--progress-every", "5"]
FIT = ["--", "--trainer.max_epochs=2", "--sweep.val_budgets=[1,16]", "--sweep.test_budgets=[1,16]"]


def tables_without_latency(out):
    """Table A and Table B as CSV rows, without the machine-dependent latency columns (ms, noisy)."""
    a = list(csv.DictReader(open(out / "results" / "table_a.csv")))
    b = [{k: v for k, v in row.items() if not k.startswith("latency")}
         for row in csv.DictReader(open(out / "results" / "table_b.csv"))]
    return a, b


def weights(out, seed):
    ckpt = out / "runs" / "listops" / "esssm" / f"seed{seed}" / "checkpoints" / "last.ckpt"
    return read_checkpoint(ckpt)["state_dict"]


@pytest.mark.e2e  # five tiny fits (one killed, then resumed): 72 s on 2 idle cores, 5 min when they are shared
def test_local_launcher_matches_in_process_and_a_killed_job_resumes(tmp_path, capsys):
    reference, launched = tmp_path / "inprocess", tmp_path / "local"
    assert reproduce_cli.main(["--out", str(reference), "--jobs", "2", *GRID, *FIT]) == 0
    capsys.readouterr()

    # seed0's fit is SIGKILLed as it starts its second epoch; seed1 trains on.
    kill = ["--trainer.callbacks+=tests.launch_faults.KillOnce", "--trainer.callbacks.version=seed0",
            f"--trainer.callbacks.marker={tmp_path / 'killed'}"]
    assert reproduce_cli.main(["--out", str(launched), "--launcher", "local", *GRID, *FIT, *kill]) == 1
    out = capsys.readouterr().out
    jobs = launch.read_jobs(launched / "launch")
    assert set(jobs) == {"listops/esssm/seed0", "listops/esssm/seed1"}
    seed0_log = launched / "runs" / "listops" / "esssm" / "seed0" / "fit.log"
    seed0_job = jobs["listops/esssm/seed0"]["job_id"]
    assert f"[listops/esssm/seed0] FAILED: job {seed0_job} (local); fit log {seed0_log}" in out
    assert "FAILED runs (rerun to resume): listops/esssm/seed0" in out
    rows = list(csv.DictReader(open(launched / "results" / "table_a.csv")))
    assert [r["n"] for r in rows] == ["1"]  # the tables hold seed1 only
    assert (launched / "runs" / "listops" / "esssm" / "seed0" / "checkpoints" / "last.ckpt").exists()

    assert reproduce_cli.main(["--out", str(launched), "--launcher", "local", "--status", *GRID]) == 0
    status = capsys.readouterr().out
    assert "listops/esssm/seed1: done" in status
    assert f"listops/esssm/seed0: failed, job {seed0_job} (local); fit log {seed0_log}" in status

    assert reproduce_cli.main(["--out", str(launched), "--launcher", "local", *GRID, *FIT, *kill]) == 0  # rerun
    out = capsys.readouterr().out
    assert "[listops/esssm/seed1] finished earlier" in out
    commands = [line for line in seed0_log.read_text().splitlines() if line.startswith("$ ")]  # one per attempt
    assert len(commands) == 2 and "--ckpt_path=last" in commands[-1] and "--ckpt_path" not in commands[0]
    assert "Restored all states from the checkpoint" in seed0_log.read_text()  # resumed, not restarted
    assert tables_without_latency(launched) == tables_without_latency(reference)
    for seed in (0, 1):  # the resumed run ends where the uninterrupted one does
        got, expected = weights(launched, seed), weights(reference, seed)
        assert got.keys() == expected.keys()
        assert all(torch.allclose(got[k], expected[k], atol=1e-6) for k in expected)

    assert reproduce_cli.main(["--out", str(launched), "--collect", *GRID]) == 0
    assert "MISSING" not in capsys.readouterr().out


def test_a_failing_job_is_reported_with_its_log_and_fails_the_command(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--launcher", "local", *GRID[:-4], "--seeds", "0",
            "--", "--trainer.no_such_option=1"]
    assert reproduce_cli.main(argv) == 1
    out = capsys.readouterr().out
    job = launch.read_jobs(tmp_path / "launch")["listops/esssm/seed0"]["job_id"]
    log = tmp_path / "runs" / "listops" / "esssm" / "seed0" / "fit.log"
    assert "no_such_option" in out  # the tail of the fit's log
    assert f"FAILED jobs:\n  listops/esssm/seed0 (job {job} (local); fit log {log}; job log " in out
    assert "FAILED runs (rerun to resume): listops/esssm/seed0" in out and "tables NOT written" in out

    assert reproduce_cli.main(["--out", str(tmp_path), "--collect", *GRID[:-4], "--seeds", "0"]) == 1
    assert "MISSING runs (not finished): listops/esssm/seed0" in capsys.readouterr().out


def test_slurm_without_sbatch_says_so_and_stops(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    message = r"--launcher slurm: there is no `sbatch` or `srun` on this machine's PATH, so no SLURM cluster"
    with pytest.raises(SystemExit, match=message):
        reproduce_cli.main(["--out", str(tmp_path), "--launcher", "slurm"])
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # nothing generated or submitted


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--slurm-partition", "gpu"], r"--slurm-partition only apply to --launcher slurm"),
     (["--launcher", "local", "--mem", "64"], r"--mem only apply to --launcher slurm \(got --launcher local\)"),
     (["--status", "--collect"], r"--status and --collect are separate steps"),
     (["--launcher", "local", "--max-running", "4"], r"--max-running only apply to --launcher slurm"),
     (["--time", "60"], r"--time only applies to --launcher local or slurm"),
     (["--launcher", "slurm", "--devices", "2", "--gpus-per-run", "4"], r"--devices 2 and --gpus-per-run 4 disagree")],
)
def test_launcher_options_that_would_be_ignored_are_refused(tmp_path, monkeypatch, args, message):
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    with pytest.raises(SystemExit, match=message):
        reproduce_cli.main(["--out", str(tmp_path), *args])


def test_slurm_job_script_carries_the_resources_and_the_requeue(tmp_path, monkeypatch):
    """The sbatch script submitit would submit, with sbatch and srun pretended present."""
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    args = reproduce_cli.parse_args(["--launcher", "slurm", "--gpus-per-run", "4", "--cpus-per-run", "32", "--mem", "200",
                                 "--time", "720", "--slurm-partition", "gpu", "--slurm-account", "lab",
                                 "--slurm-qos", "high", "--max-running", "8"])
    executor = launch.make_executor("slurm", tmp_path, args, devices=4)
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit FOLDER", "uid")
    for flag in ("--partition=gpu", "--account=lab", "--qos=high", "--gpus-per-node=4", "--ntasks-per-node=4",
                 "--cpus-per-task=8", "--mem=200GB", "--time=720", "--nodes=1", "--requeue", "--signal=USR2@90",
                 "--job-name=esssm"):
        assert f"#SBATCH {flag}\n" in script
    assert "srun --unbuffered" in script
    assert executor._executor.parameters["array_parallelism"] == 8  # the array's %8, set when it is submitted


def test_slurm_fits_use_lightnings_requeue_on_submitits_signal(tmp_path):
    run = Run("listops", "esssm", tmp_path / "esssm.yaml", tmp_path, 0)
    plugins, root = launch.slurm_fit_arguments(run)
    plugin = json.loads(plugins.split("=", 1)[1])
    assert plugin["class_path"] == "lightning.pytorch.plugins.environments.SLURMEnvironment"
    assert plugin["init_args"] == {"auto_requeue": True, "requeue_signal": "SIGUSR2"}
    assert root == f"--trainer.default_root_dir={run.log_dir}"  # where Lightning writes hpc_ckpt_N.ckpt

    assert launch.hpc_resume(run) == []
    run.ckpt_dir.mkdir(parents=True)
    (run.ckpt_dir / "last.ckpt").write_text("last")
    assert launch.hpc_resume(run) == []
    (run.log_dir / "hpc_ckpt_1.ckpt").write_text("saved on the requeue signal, after last.ckpt")
    assert launch.hpc_resume(run) == ["--ckpt_path=hpc"]


def test_a_lock_left_by_an_earlier_attempt_of_the_same_slurm_job_is_removed(tmp_path):
    run = Run("listops", "esssm", tmp_path / "esssm.yaml", tmp_path, 0)
    run.log_dir.mkdir(parents=True)
    lock = run.log_dir / "fit.lock"
    lock.write_text("4242 node-a")  # a fit on another node that nobody started here
    launch.release_stale_lock(run, "77_3", "node-b")
    assert lock.exists()  # respected: not this job's
    launch.release_stale_lock(run, "77_3", "node-b")
    assert lock.exists()  # the earlier attempt of job 77_3 ran on node-b, the lock names node-a
    lock.write_text("4343 node-b")  # the killed fit of 77_3's earlier attempt
    launch.release_stale_lock(run, "77_3", socket.gethostname())
    assert not lock.exists()
    assert json.loads((run.log_dir / launch.ATTEMPT_FILE).read_text())["host"] == socket.gethostname()
    lock.write_text("4444 node-c")
    launch.release_stale_lock(run, "78_0", "node-c")  # another job: its lock stays for the fit to respect
    assert lock.exists()


def test_a_fit_that_exits_0_without_finishing_training_is_not_marked_finished(tmp_path, monkeypatch):
    """A fit stopped by SIGTERM (as SLURM does on a requeue) exits 0 through Lightning's SIGTERMException."""
    run = Run("listops", "esssm", tmp_path / "esssm.yaml", tmp_path, 0)
    monkeypatch.setattr(reproduce, "fit_command", lambda *args: ["true"])
    board = reproduce.ProgressBoard(1, 1)
    assert not reproduce.train(run, {}, 1, [], None, board) and not run.finished.exists()
    record = {"epoch": 0, "max_epochs": 1, "step": 2, "total": 2, "s_per_step": 0.1, "eta_s": 0.0, "elapsed_s": 0.2}
    run.progress.write_text(json.dumps({**record, "done": False}))
    assert not reproduce.train(run, {}, 1, [], None, board) and not run.finished.exists()
    run.progress.write_text(json.dumps({**record, "done": True}))
    assert reproduce.train(run, {}, 1, [], None, board) and run.finished.exists()


def test_job_states_come_from_the_run_and_submitits_records(tmp_path, monkeypatch):
    run = Run("listops", "esssm", tmp_path / "esssm.yaml", tmp_path, 0)
    folder = tmp_path / "submitit"
    folder.mkdir()
    assert launch.job_state(run, None) == "not submitted"
    record = {"launcher": "local", "job_id": "999999999", "folder": str(folder)}
    assert launch.job_state(run, record) == "failed"  # no such process, no finished.json
    monkeypatch.setattr(launch, "_alive", lambda pid: True)
    assert launch.job_state(run, record) == "running"
    (folder / "999999999_0_result.pkl").write_bytes(b"")
    assert launch.job_state(run, record) == "failed"  # ended without finishing
    run.ckpt_dir.mkdir(parents=True)
    run.finished.write_text("{}")
    assert launch.job_state(run, record) == "done"

    class Sacct:
        def __init__(self, folder, job_id):
            self.state = {"1": "PENDING", "2": "RUNNING", "3": "CANCELLED by 42", "4": "TIMEOUT"}[job_id]

    monkeypatch.setattr(launch.submitit, "SlurmJob", Sacct)
    run.finished.unlink()
    states = [launch.job_state(run, {"launcher": "slurm", "job_id": i, "folder": str(folder)}) for i in "1234"]
    assert states == ["pending", "running", "failed", "failed"]
