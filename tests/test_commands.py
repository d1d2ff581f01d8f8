"""The command line as a user meets it: an expected mistake ends in one line and a non-zero exit
(its traceback only with --debug or ESSSM_DEBUG=1), `--help` answers without importing torch,
`esssm plan` plans on validation curves only, and a fit writes a mid-epoch last.ckpt that
`--ckpt_path last` resumes from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml

from esssm.lab.cli import lightning_main, main
from esssm.lab.loading import load_module
from esssm.train.cli import MID_EPOCH_INTERVAL

REPO = Path(__file__).parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
CLASSIFIER = FIXTURES / "listops_esssm.ckpt"  # ES-SSM on ListOps, k_max 8, seq_len 64
TINY_DATA = FIXTURES / "listops_tiny"  # 64 train, 32 val, 32 test examples


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


def data_config(folder: Path, data_dir: Path) -> Path:
    """A config with only the data: section (ListOps at the fixture checkpoint's length)."""
    path = folder / f"data_{data_dir.name}.yaml"
    spec = {"class_path": "datamodules.ListOpsDataModule",
            "init_args": {"max_len": 64, "data_dir": str(data_dir), "batch_size": 16}}
    path.write_text(yaml.safe_dump({"data": spec}))
    return path


def copy_checkpoint(folder: Path, name: str = "last.ckpt") -> Path:
    target = folder / name
    shutil.copy(CLASSIFIER, target)
    shutil.copy(f"{CLASSIFIER}.sha256", f"{target}.sha256")
    return target


def command(*args: str, debug: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m esssm ARGS` in a fresh process, as from a shell (no ESSSM_DEBUG unless `debug`)."""
    env = {k: v for k, v in os.environ.items() if k != "ESSSM_DEBUG"}
    env |= {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"} | ({"ESSSM_DEBUG": "1"} if debug else {})
    return subprocess.run([sys.executable, "-m", "esssm", *args], capture_output=True, text=True, env=env,
                          cwd=cwd or REPO, timeout=300)


# ------------------------------------------------------------------------------ one-line errors


def mistakes(tmp: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (esssm arguments, text the one line must hold)."""
    ckpt = copy_checkpoint(tmp)
    existing = tmp / "model.pt"
    existing.write_bytes(b"earlier export")
    foreign = tmp / "notes.ckpt"
    foreign.write_text("not a checkpoint")
    corrupt = copy_checkpoint(tmp, "corrupt.ckpt")
    corrupt.write_bytes(corrupt.read_bytes()[:-10] + bytes(10))
    return {
        "missing data folder": (["sweep", "--ckpt", str(ckpt), "--data-config", str(data_config(tmp, tmp / "gone"))],
                                f"ListOpsDataModule data folder {tmp / 'gone'} does not exist"),
        "existing output": (["export", "--ckpt", str(ckpt), "--budget", "2", "--out", str(existing)],
                            f"{existing} already exists"),
        "classifier to generate": (["generate", "--ckpt", str(ckpt), "--max-new-bytes", "2"],
                                   "generation needs a byte-level LanguageModel"),
        "budget beyond k_max": (["sweep", "--ckpt", str(ckpt), "--data-config", str(data_config(tmp, TINY_DATA)),
                                 "--budgets", "2,9"], "--budgets: budgets [9] are outside 1..k_max=8"),
        "missing checkpoint": (["export", "--ckpt", str(tmp / "none.ckpt"), "--budget", "2", "--out",
                                str(tmp / "k2.pt")], str(tmp / "none.ckpt")),
        "foreign checkpoint": (["plan", "--ckpt", str(foreign), "--latency-ms", "5"], str(foreign)),
        "corrupt checkpoint": (["cascade", "--ckpt", str(corrupt), "--data-config", str(data_config(tmp, TINY_DATA))],
                               "fails its checksum"),
    }


def error_lines(prog: str, stderr: str) -> list[str]:
    """The lines of `stderr` that start the error report of `prog` (Lightning's banners aside)."""
    return [line for line in stderr.splitlines() if line.startswith(f"{prog}: error: ")]


@pytest.mark.parametrize("name", ["missing data folder", "existing output", "classifier to generate",
                                  "budget beyond k_max", "missing checkpoint", "foreign checkpoint",
                                  "corrupt checkpoint"])
def test_an_expected_mistake_is_one_line_and_exit_1(tmp_path, name, monkeypatch, capsys):
    """The function behind `esssm` (what `python -m esssm` runs), as from a shell: no ESSSM_DEBUG."""
    monkeypatch.delenv("ESSSM_DEBUG")
    monkeypatch.setattr(sys, "argv", ["esssm"])
    args, expected = mistakes(tmp_path)[name]
    assert main(args) == 1  # returned: no exception, so no traceback
    lines = error_lines(f"esssm {args[0]}", capsys.readouterr().err)
    assert len(lines) == 1 and expected in lines[0]


def test_from_a_shell_the_mistake_is_one_line_and_debug_shows_the_traceback(tmp_path):
    args, expected = mistakes(tmp_path)["existing output"]
    result = command(*args)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == f"esssm export: error: {expected}: choose another --out, or pass --overwrite to replace it\n"
    for result in (command(*args, "--debug"), command(*args, debug=True)):
        assert result.returncode == 1
        assert "Traceback" in result.stderr and f"FileExistsError: {expected}" in result.stderr


def test_fit_on_missing_data_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ESSSM_DEBUG")
    monkeypatch.setattr(sys, "argv", ["esssm"])
    missing = ["fit", "--config", str(fit_config(tmp_path)), "--data.init_args.data_dir", str(tmp_path / "gone")]
    assert main(missing) == 1
    lines = error_lines("esssm fit", capsys.readouterr().err)
    assert len(lines) == 1 and f"ListOpsDataModule data folder {tmp_path / 'gone'} does not exist" in lines[0]


def test_a_bug_keeps_its_traceback(monkeypatch, capsys):
    """Only expected errors are shortened: anything else is a bug and must be reportable."""
    from esssm.lab import commands

    monkeypatch.delenv("ESSSM_DEBUG")

    def broken(argv):
        raise KeyError("a bug")

    monkeypatch.setitem(commands.TOOLS, "sweep", broken)
    with pytest.raises(KeyError):
        main(["sweep"])
    monkeypatch.setitem(commands.TOOLS, "sweep", lambda argv: int(argv[0]))
    assert main(["sweep", "x"]) == 1  # ValueError: expected, one line
    assert capsys.readouterr().err == "esssm sweep: error: invalid literal for int() with base 10: 'x'\n"


# ------------------------------------------------------------------------------ the overwrite flag


def test_overwrite_is_one_bare_flag_in_every_command(tmp_path, capsys):
    for args in (["export"], ["generate"]):
        with pytest.raises(SystemExit):
            main([*args, "--help"])
        assert "--overwrite " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        lightning_main(["fit", "--help"])
    assert "--overwrite " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["generate", "--ckpt", "x.ckpt", "--max-new-bytes", "2", "--force"])  # the old spelling is gone
    out = tmp_path / "sample.txt"
    out.write_text("kept")
    with pytest.raises(SystemExit):
        main(["generate", "--ckpt", "x.ckpt", "--max-new-bytes", "2", "--out", str(out)])
    assert "pass --overwrite to replace it" in capsys.readouterr().err and out.read_text() == "kept"


# ------------------------------------------------------------------------------ fast help


def run_module(module: str, *args: str) -> str:
    """The code of `python -m <module> <args>`."""
    return f"import runpy; sys.argv = [{module!r}, *{list(args)!r}]; runpy.run_module({module!r}, run_name='__main__')"


HELP_COMMANDS = {
    "esssm": "from esssm.lab.cli import main; main(['--help'])",
    **{f"esssm {tool}": f"from esssm.lab.cli import main; main(['{tool}', '--help'])"
       for tool in ("sweep", "export", "plan", "cascade", "generate")},
    "lightning": "from esssm.lab.cli import lightning_main; lightning_main(['--help'])",
    "./reproduce.sh": run_module("esssm.lab.reproduce_cli", "--help"),
    **{f"python -m datamodules.{task} generate": run_module(f"datamodules.{task}", "generate", "--help")
       for task in ("listops", "pathfinder")},
    "python conf/make_configs.py": f"import runpy; sys.argv = ['make_configs.py', '--help']; "
                                   f"runpy.run_path({str(REPO / 'conf' / 'make_configs.py')!r}, run_name='__main__')",
}
HELP_IMPORTS = {"python -m datamodules.pathfinder generate": ["numpy"]}  # its generator's module draws with numpy


@pytest.mark.parametrize("name", HELP_COMMANDS)
def test_help_answers_without_importing_torch(name):
    """Measured on 2 shared CPU cores at load 4-5: 0.25-0.4 s (6-8 s before lazy imports)."""
    script = (f"import sys\ncode = 0\ntry:\n    {HELP_COMMANDS[name]}\nexcept SystemExit as stop:\n    code = stop.code\n"
              "print(sorted(m for m in ('torch', 'lightning', 'numpy') if m in sys.modules), file=sys.stderr)\n"
              "sys.exit(code)")
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    seconds = time.perf_counter() - start
    assert result.returncode == 0 and "usage:" in result.stdout
    assert result.stderr.strip() == str(HELP_IMPORTS.get(name, []))  # nothing heavy imported
    assert seconds < 3.0


# ------------------------------------------------------------------------------ plan: validation only


def test_plan_refuses_a_test_curve_and_uses_the_validation_curve(tmp_path, capsys):
    ckpt = copy_checkpoint(tmp_path, "best-epoch0-step3.ckpt")
    config = data_config(tmp_path, TINY_DATA)
    plan = ["plan", "--ckpt", str(ckpt), "--latency-ms", "1e9", "--repeats", "1", "--warmup", "0"]
    assert main(["sweep", "--ckpt", str(ckpt), "--data-config", str(config), "--budgets", "2,4", "--split", "test"]) == 0
    test_curve = tmp_path / "best-epoch0-step3.budget_curve_test.csv"
    assert test_curve.is_file()
    with pytest.raises(FileNotFoundError, match="no validation budget curve .*esssm sweep .*--split val"):
        main(plan)
    with pytest.raises(ValueError, match="test-split curve; planning on the test split would leak it"):
        main([*plan, "--curve", str(test_curve)])
    assert main(["sweep", "--ckpt", str(ckpt), "--data-config", str(config), "--budgets", "2,4", "--split", "val"]) == 0
    capsys.readouterr()
    assert main(plan) == 0
    assert f"curve: {tmp_path / 'best-epoch0-step3.budget_curve_val.csv'};" in capsys.readouterr().out


# ------------------------------------------------------------------------------ mid-epoch checkpoints


class KillAt(L.Callback):
    """Kills the fit (raises) at the start of global step `step`, like a kill -9: nothing is
    written after it. The tiny data has 4 steps per epoch, so step 6 is mid-epoch."""

    def __init__(self, step: int = 6) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError("killed")


def fit_config(tmp_path: Path) -> Path:
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_epochs": 2, "enable_progress_bar": False, "deterministic": True,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": "tiny", "version": "run1"}}},
        "model": {"backbone": {"class_path": "esssm.model.ESSSM",
                               "init_args": {"d_model": 16, "n_layers": 1, "seq_len": 64, "k_max": 4}},
                  "lr": 0.003, "ema_decay": 0.9, "budget": {"warmup_epochs": 0}},
        "data": yaml.safe_load(data_config(tmp_path, TINY_DATA).read_text())["data"],
        "sweep": {"val_budgets": [4], "test_budgets": [4]},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_fit_writes_last_ckpt_every_10_minutes_by_default(tmp_path, monkeypatch, capsys):
    assert MID_EPOCH_INTERVAL == timedelta(minutes=10)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(fit_config(tmp_path)), "--print_config"])
    mid_epoch = yaml.safe_load(capsys.readouterr().out)["mid_epoch_checkpoint"]
    assert mid_epoch["filename"] == "last" and mid_epoch["train_time_interval"] == "0:10:00"
    assert mid_epoch["every_n_epochs"] == 0 and mid_epoch["enable_version_counter"] is False


def test_a_fit_killed_mid_epoch_resumes_from_the_mid_epoch_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning"])
    monkeypatch.chdir(tmp_path)
    config = fit_config(tmp_path)
    ckpt_dir = tmp_path / "runs" / "tiny" / "run1" / "checkpoints"
    every_step = ["--mid_epoch_checkpoint.train_time_interval", "0:00:00.000001"]  # the default, shortened
    with pytest.raises(RuntimeError, match="killed"):
        lightning_main(["fit", "--config", str(config), *every_step, "--trainer.callbacks+=test_commands.KillAt"])
    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 6  # the last step before the kill, not the epoch end (step 4)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches_done": 2}]
    lightning_main(["fit", "--config", str(config), "--ckpt_path", "last"])
    resumed = load_module(ckpt_dir / "last.ckpt").state_dict()
    assert torch.load(ckpt_dir / "last.ckpt", weights_only=False)["global_step"] == 8

    lightning_main(["fit", "--config", str(config), "--trainer.logger.init_args.version", "whole"])  # never killed
    whole = load_module(tmp_path / "runs" / "tiny" / "whole" / "checkpoints" / "last.ckpt").state_dict()
    assert all(torch.equal(resumed[name], whole[name]) for name in whole)
