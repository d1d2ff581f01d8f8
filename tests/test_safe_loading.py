"""No checkpoint or export a user points at runs code: each tool refuses a pickle that names
code (here: os.system creating a marker file), naming the file and the option that would load
it, and the marker never appears. --trust-checkpoint loads an older pickle on request; the
project's own checkpoints need no option."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch.serialization import get_unsafe_globals_in_checkpoint

from esssm.checkpoints import CheckpointError, UnsafeCheckpointError
from esssm.files import sidecar_path, sidecar_text
from esssm.lab.cli import lightning_main, main
from esssm.lab.loading import load_module
from test_cli import write_config
from test_failure_behaviour import plain_argv, run  # noqa: F401  (argv reset; a toy run fitted through the CLI)

FIXTURES = Path(__file__).parent / "fixtures"

pytestmark = pytest.mark.usefixtures("one_thread")


class RunsShell:
    """Pickles as a call of os.system: a full unpickle runs the command."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def save_with_sidecar(payload, path: Path, **kwargs) -> Path:
    """torch.save plus a valid sha256 sidecar: the checksum proves integrity, not safety."""
    torch.save(payload, path, **kwargs)
    sidecar_path(path).write_text(sidecar_text(path, path.name))
    return path


def crafted(source: Path, path: Path, extra, **kwargs) -> Path:
    """`source` (a real checkpoint or export) with one more entry, `extra`."""
    payload = torch.load(source, weights_only=True)
    payload["extra"] = extra
    return save_with_sidecar(payload, path, **kwargs)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "marker"


@pytest.fixture
def evil(run, tmp_path: Path, marker: Path) -> Path:
    return crafted(run["last"], tmp_path / "evil.ckpt", RunsShell(f"touch {marker}"))


def tool_args(tool: str, run, tmp_path: Path) -> list[str]:
    return {
        "sweep": ["--data-config", str(run["config"])],
        "export": ["--budget", "2", "--out", str(tmp_path / "k2.pt")],
        "plan": ["--latency-ms", "10"],
        "cascade": ["--data-config", str(run["config"])],
        "generate": ["--max-new-bytes", "2"],
    }[tool]


@pytest.mark.parametrize("tool", ["sweep", "export", "plan", "cascade", "generate"])
def test_every_tool_refuses_a_checkpoint_that_runs_code(run, tmp_path, evil, marker, tool):
    with pytest.raises(UnsafeCheckpointError, match=f"checkpoint {evil} .*posix.system.*--trust-checkpoint"):
        main([tool, "--ckpt", str(evil), *tool_args(tool, run, tmp_path)])
    assert not marker.exists()


def test_the_older_pickle_format_is_refused_too(run, tmp_path, marker):
    legacy = crafted(run["last"], tmp_path / "legacy.ckpt", RunsShell(f"touch {marker}"),
                     _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match=f"checkpoint {legacy} holds pickled objects"):
        load_module(legacy)
    assert not marker.exists()


def test_fit_refuses_to_start_or_resume_from_a_checkpoint_that_runs_code(run, tmp_path, evil, marker, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused = f"checkpoint {evil} .*posix.system.*cannot be resumed.*--trust-checkpoint"
    for trust in ([], ["--weights_only", "false"]):  # Lightning's own option does not lift the refusal
        with pytest.raises(UnsafeCheckpointError, match=refused):
            lightning_main(["fit", "--config", str(run["config"]), "--ckpt_path", str(evil), *trust])
    # --ckpt_path last is read by Lightning itself, through AtomicCheckpointIO
    config = write_config(tmp_path)
    shutil.copytree(run["root"] / "runs", tmp_path / "runs")
    last = tmp_path / "runs" / "toy" / "run1" / "checkpoints" / "last.ckpt"
    shutil.copy(evil, last)
    shutil.copy(sidecar_path(evil), sidecar_path(last))
    resume = ["fit", "--config", str(config), "--trainer.max_epochs", "3", "--ckpt_path", "last"]
    with pytest.raises(UnsafeCheckpointError, match=f"checkpoint {last} .*cannot be resumed"):
        lightning_main([*resume, "--weights_only", "false"])
    assert not marker.exists()


def test_generate_refuses_a_crafted_export(run, tmp_path, marker):
    export = tmp_path / "k2.pt"
    assert main(["export", "--ckpt", str(run["last"]), "--budget", "2", "--out", str(export)]) == 0
    bad = crafted(export, tmp_path / "bad_export.pt", RunsShell(f"touch {marker}"))
    with pytest.raises(UnsafeCheckpointError, match=f"{bad} .*--trust-checkpoint"):
        main(["generate", "--ckpt", str(bad), "--max-new-bytes", "2"])
    assert not marker.exists()


def popen_spec(marker: Path) -> dict:
    """A backbone spec naming subprocess.Popen: plain data, loadable weights-only."""
    return {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}}


def test_a_backbone_spec_naming_other_code_is_never_called(run, tmp_path, marker):
    checkpoint = torch.load(run["last"], weights_only=True)
    checkpoint["hyper_parameters"].pop("_instantiator")  # else Lightning's CLI instantiator checks the type
    checkpoint["hyper_parameters"]["backbone"] = popen_spec(marker)
    bad = save_with_sidecar(checkpoint, tmp_path / "popen.ckpt")
    refused = f"checkpoint {bad} cannot be rebuilt: .*'subprocess.Popen' is not a backbone"
    with pytest.raises(CheckpointError, match=refused):
        main(["export", "--ckpt", str(bad), "--budget", "2", "--out", str(tmp_path / "k2.pt")])
    export = tmp_path / "k2.pt"
    main(["export", "--ckpt", str(run["last"]), "--budget", "2", "--out", str(export)])
    payload = torch.load(export, weights_only=True)
    payload["config"]["backbone"] = popen_spec(marker)
    bad_export = save_with_sidecar(payload, tmp_path / "popen_export.pt")
    with pytest.raises(ValueError, match="'subprocess.Popen' is not a backbone class"):
        main(["generate", "--ckpt", str(bad_export), "--max-new-bytes", "2"])
    assert not marker.exists()


def test_trust_checkpoint_loads_an_older_pickle_on_request(run, tmp_path):
    """An older tool's checkpoint holding an argparse.Namespace (harmless, but not weights-only)."""
    old = crafted(run["last"], tmp_path / "old.ckpt", argparse.Namespace(note="written by an older tool"))
    out = tmp_path / "k2.pt"
    with pytest.raises(UnsafeCheckpointError, match=f"{old} .*argparse.Namespace.*--trust-checkpoint"):
        main(["export", "--ckpt", str(old), "--budget", "2", "--out", str(out)])
    assert main(["export", "--ckpt", str(old), "--budget", "2", "--out", str(out), "--trust-checkpoint"]) == 0
    assert load_module(old, trust=True).source["checkpoint"] == "old.ckpt"


def test_the_projects_checkpoints_need_no_trust(run):
    """Checkpoints written by the CLI now and by an earlier version (tests/fixtures) hold only
    tensors and plain containers, so they load weights-only with no allow-listed globals."""
    for path in (run["last"], FIXTURES / "listops_esssm.ckpt", FIXTURES / "lm_fixed.ckpt"):
        assert get_unsafe_globals_in_checkpoint(path) == []
        load_module(path)


def test_help_says_trusting_a_checkpoint_runs_its_code(capsys):
    for tool in ("sweep", "export", "plan", "cascade", "generate"):
        with pytest.raises(SystemExit):
            main([tool, "--help"])
        assert "RUNS CODE FROM THE FILE" in " ".join(capsys.readouterr().out.split())
