"""Failure behaviour: each case is the fault a user hit, and the test asserts a clear error, an
exit code that tells the truth, and that no file holding good work is replaced by a worse one."""

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

from esssm import infer
from esssm.checkpoints import CheckpointError, save_checked
from esssm.files import ChecksumError, sidecar_path, verify_checksum
from esssm.lab.cli import lightning_main, main
from esssm.lab.commands import TOOLS
from esssm.lab.loading import load_module
from esssm.train.cli import AtomicCheckpointIO, RunFolderError
from test_cli import write_config

REPO = Path(__file__).parents[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["esssm"])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A toy ES-SSM fitted for 2 epochs through the CLI: its config, run folder and checkpoints."""
    root = tmp_path_factory.mktemp("run")
    config = write_config(root)
    old = os.getcwd()
    os.chdir(root)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", ["lightning"])
            lightning_main(["fit", "--config", str(config)])
    finally:
        os.chdir(old)
    ckpt_dir = root / "runs" / "toy" / "run1" / "checkpoints"
    return {"root": root, "config": config, "dir": ckpt_dir, "last": ckpt_dir / "last.ckpt",
            "best": next(ckpt_dir.glob("best-*.ckpt"))}


def copy_ckpt(src: Path, dst: Path, sidecar: bool = True) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(src, dst)
    if sidecar:
        shutil.copy(sidecar_path(src), sidecar_path(dst))
    return dst


def nan_checkpoint(run, path: Path) -> Path:
    """last.ckpt with one EMA weight set to NaN, saved without a sidecar (as an older tool would)."""
    checkpoint = torch.load(run["last"], weights_only=False)
    name = next(k for k in checkpoint["state_dict"] if k.startswith("ema.") and k.endswith("weight"))
    checkpoint["state_dict"][name].view(-1)[0] = float("nan")
    torch.save(checkpoint, path)
    return path


# ------------------------------------------------------------------------------------ NaN guards


def test_nan_loss_stops_fit_with_nonzero_exit_naming_the_step(tmp_path):
    config = write_config(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "esssm", "fit", "--config", str(config), "--model.lr", "1e6"],
        cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}"},
    )
    assert result.returncode != 0
    assert "FloatingPointError: non-finite training loss at global step 1" in result.stderr
    assert "--model.skip_nonfinite_steps" in result.stderr
    assert not list((tmp_path / "runs").rglob("*.ckpt"))  # nothing diverged is kept as best or last


class NaNBatchData:
    """Continuous toy inputs (B, L, 1) whose training set holds one NaN example (a broken file)."""

    @staticmethod
    def module(nan_at: int | None = 5):
        import lightning as L
        from torch.utils.data import DataLoader

        from toy_data import collate

        def examples(count, seed):
            gen = torch.Generator().manual_seed(seed)
            x = torch.randn(count, 12, 1, generator=gen)
            y = (x.mean((1, 2)) > 0).long()
            return [(i, x[i], int(y[i])) for i in range(count)]

        train = examples(32, 0)
        if nan_at is not None:
            train[nan_at][1][3, 0] = float("nan")

        def collate_float(items):
            batch = collate([(i, torch.zeros(len(x), dtype=torch.long), y) for i, x, y in items])
            batch["x"] = torch.stack([x for _, x, _ in items])
            return batch

        class Data(L.LightningDataModule):
            def train_dataloader(self):
                return DataLoader(train, batch_size=8, collate_fn=collate_float)

            def val_dataloader(self):
                return DataLoader(examples(16, 1), batch_size=8, collate_fn=collate_float)

        return Data()


def fit_nan_batch(tmp_path, skip: int, nan_at: int = 5, ema_decay: float | None = None, callbacks=(), **trainer_args):
    import lightning as L

    from esssm.model import ESSSM
    from esssm.train.lit import SequenceModule

    backbone = ESSSM(d_model=8, n_layers=1, seq_len=12, k_max=4, dropout=0.0, drop_path=0.0)
    task = SequenceModule(backbone, num_classes=2, input_dim=1, ema_decay=ema_decay, skip_nonfinite_steps=skip)
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_epochs=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, plugins=[AtomicCheckpointIO()],
                        callbacks=list(callbacks), **trainer_args)
    trainer.fit(task, NaNBatchData.module(nan_at))
    return task, trainer


class StateAround:
    """Snapshots everything an optimizer step may change (weights, EMA, optimizer state, learning
    rate schedule) when training batch `first` starts and when batch `last` ends."""

    def __init__(self, first: int, last: int) -> None:
        import lightning as L

        self.states = []
        snapshot = self.snapshot

        class Spy(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if batch_idx == first:
                    snapshot(trainer, pl_module)

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if batch_idx == last:
                    snapshot(trainer, pl_module)

        self.callback = Spy()

    def snapshot(self, trainer, pl_module) -> None:
        import copy

        scheduler = trainer.lr_scheduler_configs[0].scheduler
        self.states.append(copy.deepcopy({
            "weights": pl_module.model.state_dict(), "ema": pl_module.ema.state_dict(),
            "optimizer": trainer.optimizers[0].state_dict(), "schedule": scheduler.state_dict(),
        }))


def assert_same(before, after, path="") -> None:
    if isinstance(before, dict):
        assert before.keys() == after.keys(), path
        for key in before:
            assert_same(before[key], after[key], f"{path}/{key}")
    elif isinstance(before, torch.Tensor):
        assert torch.equal(before, after), f"{path} changed"
    elif isinstance(before, (list, tuple)):
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            assert_same(b, a, f"{path}/{i}")
    else:
        assert before == after, f"{path} changed: {before} -> {after}"


def test_skipping_nonfinite_steps_is_opt_in_and_bounded(tmp_path):
    with pytest.raises(FloatingPointError, match=r"non-finite training loss at global step 0 .*batch 0.*: nan\)"):
        fit_nan_batch(tmp_path / "strict", skip=0)
    with pytest.warns(UserWarning, match="step skipped"):
        task, trainer = fit_nan_batch(tmp_path / "lenient", skip=1)
    # 4 batches; the NaN one ran no backward, so its optimizer step had no gradients and changed nothing
    assert task.skipped_steps == 1 and trainer.global_step == 4
    assert all(torch.isfinite(p).all() for p in task.parameters())


@pytest.mark.parametrize(("accumulate", "nan_at", "batches"), [(1, 13, (1, 1)), (2, 20, (2, 3))])
def test_a_skipped_step_changes_nothing(tmp_path, accumulate, nan_at, batches):
    """The NaN example is in the second optimizer step (batches of 8): that step leaves the
    weights, the EMA, the optimizer's moments and step counts and the learning-rate schedule
    exactly as they were. With accumulation the NaN micro-batch comes first, and the finite
    micro-batch after it in the same step is dropped too."""
    spy = StateAround(*batches)
    with pytest.warns(UserWarning, match="step skipped"):
        task, trainer = fit_nan_batch(tmp_path, skip=1, nan_at=nan_at, ema_decay=0.9, callbacks=[spy.callback],
                                      accumulate_grad_batches=accumulate)
    assert task.skipped_steps == 1 and len(spy.states) == 2
    assert spy.states[0]["optimizer"]["state"]  # an earlier step did update: there is state to keep
    assert_same(*spy.states)


def test_nonfinite_model_is_never_saved_and_previous_checkpoint_survives(run, tmp_path):
    target = copy_ckpt(run["last"], tmp_path / "last.ckpt")
    before = target.read_bytes()
    state = {"w": torch.tensor([1.0, float("nan")])}
    with pytest.raises(CheckpointError, match=f"refusing to write {target}.*non-finite weights \\(w\\)"):
        save_checked(target, {"state_dict": state}, state)
    assert target.read_bytes() == before and verify_checksum(target)


def test_validation_of_a_nan_model_stops_before_any_checkpoint(run):
    import lightning as L

    from toy_data import ToyDataModule

    task = load_module(run["last"])
    with torch.no_grad():
        next(task.ema.parameters()).view(-1)[0] = float("nan")
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(FloatingPointError, match="val loss is nan"):
        trainer.validate(task, ToyDataModule(val_size=21))


def test_sweep_export_plan_refuse_a_nan_checkpoint(run, tmp_path):
    bad = nan_checkpoint(run, tmp_path / "nan.ckpt")
    with pytest.raises(FloatingPointError, match=r"test loss is not finite at budget\(s\) \[1, 2, 3, 4\]"):
        main(["sweep", "--ckpt", str(bad), "--data-config", str(run["config"]), "--budgets", "all"])
    assert not list(tmp_path.glob("*.csv"))  # no NaN curve written
    with pytest.raises(CheckpointError, match=f"checkpoint {bad}: the model holds non-finite weights"):
        main(["export", "--ckpt", str(bad), "--budget", "2", "--out", str(tmp_path / "k2.pt")])
    with pytest.raises(CheckpointError, match="non-finite weights"):
        main(["plan", "--ckpt", str(bad), "--latency-ms", "10"])
    assert not (tmp_path / "k2.pt").exists()


# ------------------------------------------------------------------------------------ atomic writes


def test_failed_checkpoint_write_keeps_the_previous_last_ckpt(run, tmp_path, monkeypatch):
    """A write that dies mid-file (disk full): the old last.ckpt and its checksum stay usable."""
    target = copy_ckpt(run["last"], tmp_path / "last.ckpt")
    before, checkpoint = target.read_bytes(), torch.load(target, weights_only=False)

    def half_then_full(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(before[: len(before) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(OSError, match=f"could not write {target}: No space left on device"):
        AtomicCheckpointIO().save_checkpoint(checkpoint, target)
    assert target.read_bytes() == before and verify_checksum(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "last.ckpt.sha256"]  # no temporaries
    AtomicCheckpointIO().load_checkpoint(target)


FULL_DISK = """
import resource, signal, sys, torch
sys.path[:0] = {paths!r}
from esssm.files import verify_checksum
from esssm.train.cli import AtomicCheckpointIO
path = {path!r}
before = open(path, "rb").read()
checkpoint = torch.load(path, weights_only=False)
checkpoint["padding"] = torch.zeros(1 << 20)  # 4 MB more than the disk (or the size limit) holds
if {rlimit}:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit, writes fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + (1 << 20),) * 2)
try:
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
except (OSError, RuntimeError) as error:
    print(error)
    assert open(path, "rb").read() == before and verify_checksum(path)
    print("previous checkpoint intact")
"""


def private_tmpfs_works() -> bool:
    """Whether this user may mount a tmpfs in a private mount namespace (no root needed where
    user namespaces are enabled)."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.mark.parametrize("disk", ["tmpfs", "rlimit"])
def test_a_full_disk_keeps_the_previous_last_ckpt(run, tmp_path, disk):
    """A real failing write: a 256 KiB tmpfs that fills up (ENOSPC), or a kernel file-size limit
    (RLIMIT_FSIZE, EFBIG) where tmpfs mounts are not allowed. The previous last.ckpt survives."""
    paths = [str(REPO), str(REPO / "tests")]
    if disk == "tmpfs" and private_tmpfs_works():
        folder = tmp_path / "disk"
        folder.mkdir()
        script = FULL_DISK.format(paths=paths, path=str(folder / "last.ckpt"), rlimit=False)
        shell = 'mount -t tmpfs -o size=256k tmpfs "$0" && cp "$1" "$1.sha256" "$0"/ && exec "$2" -c "$3"'
        command = ["unshare", "-rm", "sh", "-c", shell, str(folder), str(run["last"]), sys.executable, script]
        expected = "is the disk full?"  # torch.save's writer itself reports ENOSPC as "unexpected pos"
    else:
        target = copy_ckpt(run["last"], tmp_path / "last.ckpt")
        command = [sys.executable, "-c", FULL_DISK.format(paths=paths, path=str(target), rlimit=True)]
        expected = "could not write"
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout and "could not write" in result.stdout
    assert result.stdout.endswith("previous checkpoint intact\n")
    assert not list(tmp_path.rglob(".*.tmp"))


def test_checkpoint_write_ignores_a_tmpdir_on_another_filesystem(run, tmp_path, monkeypatch):
    shm = Path("/dev/shm")
    other = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path / "elsewhere"
    monkeypatch.setenv("TMPDIR", str(other))
    monkeypatch.setattr(tempfile, "tempdir", None)
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((Path(src), Path(dst))), real_replace(src, dst)))
    target = tmp_path / "ckpts" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(torch.load(run["last"], weights_only=False), target)
    assert all(src.parent == dst.parent == target.parent for src, dst in renames) and len(renames) == 2
    assert AtomicCheckpointIO().load_checkpoint(target)["global_step"] == 8
    assert not list(other.iterdir())
    shutil.rmtree(other)


def test_failed_export_check_keeps_the_good_export(run, tmp_path, monkeypatch):
    out = tmp_path / "k2.pt"
    assert main(["export", "--ckpt", str(run["last"]), "--budget", "2", "--out", str(out)]) == 0
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match=f"{out} already exists.*--overwrite"):
        main(["export", "--ckpt", str(run["last"]), "--budget", "3", "--out", str(out)])
    from esssm.infer import export

    def disagree(name, got, expected, tol=1e-5):
        raise RuntimeError(f"{name} disagrees with the full model")

    monkeypatch.setattr(export, "check_agreement", disagree)
    with pytest.raises(RuntimeError, match="disagrees"):
        main(["export", "--ckpt", str(run["last"]), "--budget", "3", "--out", str(out), "--overwrite"])
    assert out.read_bytes() == before and infer.load_exported(out).k_max == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k2.pt", "k2.pt.sha256"]


# ------------------------------------------------------------------------------------ no silent overwrite


def fit(run_root: Path, *args: str) -> None:
    config = run_root / "toy.yaml"
    cwd = os.getcwd()
    os.chdir(run_root)
    try:
        lightning_main(["fit", "--config", str(config), "--trainer.max_epochs", "1", *args])
    finally:
        os.chdir(cwd)


def test_fit_refuses_an_existing_run_unless_resuming_or_overwrite(tmp_path):
    write_config(tmp_path)
    fit(tmp_path)
    run_dir = tmp_path / "runs" / "toy" / "run1"
    before = (run_dir / "checkpoints" / "last.ckpt").read_bytes()
    with pytest.raises(RunFolderError, match=f"run folder {run_dir} already holds a run .*--ckpt_path last"):
        fit(tmp_path)
    assert (run_dir / "checkpoints" / "last.ckpt").read_bytes() == before
    fit(tmp_path, "--overwrite")
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # the earlier run's files are gone, not mixed
    assert not (run_dir / "fit.lock").exists()


def test_overwrite_of_a_run_that_is_training_now_deletes_nothing(tmp_path):
    """--overwrite into a folder another live fit holds is refused before anything is deleted."""
    import socket

    write_config(tmp_path)
    fit(tmp_path)
    run_dir = tmp_path / "runs" / "toy" / "run1"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / "fit.lock").write_text(f"{other.pid} {socket.gethostname()}")
        before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        assert any(p.name.startswith("best-") for p in before) and run_dir / "config.yaml" in before
        with pytest.raises(RunFolderError, match=f"another fit \\({other.pid} on .*\\) is training into {run_dir}"):
            fit(tmp_path, "--overwrite")
        assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    finally:
        other.kill()
        other.wait()


@pytest.mark.parametrize(
    ("setting", "message"),
    [(["--model.budget.k_min", "9"], r"model\.budget\.k_min=9 is outside 1\.\.k_max=4"),
     (["--model.budget.grid", "[1,2,8]"],
      r"model\.budget\.grid=\[1, 2, 8\] has \[1, 8\] outside k_min\.\.k_max = 2\.\.4"),
     (["--model.budget.kmin", "1"], r"model\.budget has no setting \['kmin'\]")],
)
def test_budget_settings_out_of_range_are_refused_not_clamped(tmp_path, setting, message):
    write_config(tmp_path)
    with pytest.raises(ValueError, match=message):
        fit(tmp_path, *setting)
    assert not (tmp_path / "runs").exists()


def test_ckpt_path_last_with_nothing_to_resume_stops(tmp_path):
    write_config(tmp_path)
    with pytest.raises(RunFolderError, match=r"--ckpt_path last: there is nothing to resume.*version_0"):
        fit(tmp_path, "--trainer.logger.init_args.version", "null", "--ckpt_path", "last")
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_second_concurrent_fit_into_the_same_folder_is_refused(tmp_path):
    write_config(tmp_path)
    run_dir = tmp_path / "runs" / "toy" / "run1"
    run_dir.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (run_dir / "fit.lock").write_text(f"{other.pid} {socket.gethostname()}")
        with pytest.raises(RunFolderError, match=f"another fit \\({other.pid} on .*\\) is training into {run_dir}"):
            fit(tmp_path)
    finally:
        other.kill()
        other.wait()
    fit(tmp_path)  # the lock of a process that is gone is taken over
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "fit.lock").exists()


def test_sweep_writes_its_own_curve_and_plan_checks_whose_curve_it_is(run, tmp_path, capsys):
    training_curve = (run["dir"] / "budget_curve_val.csv").read_text()
    args = ["--data-config", str(run["config"]), "--split", "val", "--budgets", "2"]
    assert main(["sweep", "--ckpt", str(run["last"]), *args]) == 0
    assert (run["dir"] / "budget_curve_val.csv").read_text() == training_curve  # untouched
    own = (run["dir"] / "last.budget_curve_val.csv").read_text().splitlines()
    assert own[0].startswith("checkpoint,sha256,epoch,step,budget") and own[1].startswith("last.ckpt,")
    assert [row.split(",")[3:5] for row in own[1:]] == [["8", "2"], ["8", "4"]]  # step 8; budget 2 and k_max

    # A best checkpoint from an earlier epoch than the training curve: no curve is its own.
    best = copy_ckpt(run["last"], tmp_path / "best.ckpt")
    checkpoint = torch.load(best, weights_only=False)
    checkpoint["global_step"] = 4
    AtomicCheckpointIO().save_checkpoint(checkpoint, best)
    shutil.copy(run["dir"] / "budget_curve_val.csv", tmp_path)
    with pytest.raises(FileNotFoundError, match="measured at training step 8, the checkpoint is at step 4"):
        main(["plan", "--ckpt", str(best), "--latency-ms", "10", "--repeats", "1"])
    with pytest.raises(FileNotFoundError, match="measured at training step 8"):
        main(["plan", "--ckpt", str(best), "--latency-ms", "10", "--curve", str(run["dir"] / "last.budget_curve_val.csv")])
    capsys.readouterr()
    assert main(["plan", "--ckpt", str(run["last"]), "--latency-ms", "1e9", "--repeats", "1", "--warmup", "0"]) == 0
    assert "last.budget_curve_val.csv" in capsys.readouterr().out  # the sweep's own curve comes first


# ------------------------------------------------------------------------------------ checkpoint integrity


def flipped(src: Path, dst: Path) -> Path:
    data = bytearray(src.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 2000] = bytes(b ^ 0xFF for b in data[middle : middle + 2000])
    if src != dst:
        copy_ckpt(src, dst)
    dst.write_bytes(bytes(data))
    return dst


def test_flipped_bytes_are_refused_everywhere_not_evaluated(run, tmp_path):
    bad = flipped(run["last"], tmp_path / "ckpts" / "last.ckpt")
    message = f"{bad} fails its checksum"
    with pytest.raises(ChecksumError, match=message):
        main(["sweep", "--ckpt", str(bad), "--data-config", str(run["config"])])
    with pytest.raises(ChecksumError, match=message):
        main(["export", "--ckpt", str(bad), "--budget", "2", "--out", str(tmp_path / "k2.pt")])
    with pytest.raises(ChecksumError, match=message):
        lightning_main(["fit", "--config", str(run["config"]), "--ckpt_path", str(bad)])
    write_config(tmp_path)  # the same run, copied, resumed with --ckpt_path last from a damaged last.ckpt
    shutil.copytree(run["root"] / "runs", tmp_path / "runs")
    resumed = tmp_path / "runs" / "toy" / "run1" / "checkpoints" / "last.ckpt"
    flipped(resumed, resumed)
    with pytest.raises(ChecksumError, match=f"{resumed} fails its checksum"):
        fit(tmp_path, "--trainer.max_epochs", "3", "--ckpt_path", "last")
    out = tmp_path / "k2.pt"
    main(["export", "--ckpt", str(run["last"]), "--budget", "2", "--out", str(out), "--torchscript"])
    script = out.with_suffix(".torchscript.pt")
    for path, load in ((out, infer.load_exported), (script, infer.load_torchscript)):
        flipped(path, path)
        with pytest.raises(ChecksumError, match=f"{path} fails its checksum"):
            load(path)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda data: b"", "is empty"),
        (lambda data: data[: len(data) // 3], "is truncated or not a PyTorch file"),
        (lambda data: b"hello, not a checkpoint\n", "is truncated or not a PyTorch file"),
    ],
)
def test_damaged_checkpoints_without_a_sidecar_name_the_file(run, tmp_path, damage, problem):
    bad = tmp_path / "last.ckpt"
    bad.write_bytes(damage(run["last"].read_bytes()))
    with pytest.raises(CheckpointError, match=f"checkpoint {bad} {problem}"):
        load_module(bad)
    with pytest.raises(CheckpointError, match=f"checkpoint {bad} {problem}"):
        main(["export", "--ckpt", str(bad), "--budget", "2", "--out", str(tmp_path / "k2.pt")])


# ------------------------------------------------------------------------------------ early, clear errors


@pytest.mark.parametrize(
    ("tool", "args", "option"),
    [
        ("sweep", ["--data-config", "x.yaml", "--budgets", "2.5"], "--budgets"),
        ("sweep", ["--data-config", "x.yaml", "--batch-size", "0"], "--batch-size"),
        ("export", ["--budget", "2", "--out", "m.pt", "--batch", "0"], "--batch"),
        ("export", ["--budget", "2", "--out", "m.pt", "--seq-len", "0"], "--seq-len"),
        ("plan", ["--latency-ms", "nan"], "--latency-ms"),
        ("plan", ["--latency-ms", "-3"], "--latency-ms"),
        ("cascade", ["--data-config", "x.yaml", "--thresholds", "0.5,inf"], "--thresholds"),
    ],
)
def test_cli_numbers_are_checked_by_argparse_before_anything_loads(tool, args, option, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([tool, "--ckpt", "does-not-exist.ckpt", *args])  # the checkpoint is never opened
    assert exit_info.value.code == 2 and f"argument {option}:" in capsys.readouterr().err


def test_budgets_beyond_k_max_are_refused_before_the_data_is_read(run, tmp_path):
    config = tmp_path / "data.yaml"
    config.write_text(f"data:\n  class_path: toy_data.ToyDataModule\n  init_args: {{data_dir: {tmp_path / 'none'}}}\n")
    with pytest.raises(ValueError, match=r"--budgets: budgets \[9\] are outside 1\.\.k_max=4 of "):
        main(["sweep", "--ckpt", str(run["last"]), "--data-config", str(config), "--budgets", "2,9"])


def test_export_to_an_unwritable_path_names_it_before_loading(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = blocker / "m.pt"
    with pytest.raises(NotADirectoryError, match=f"cannot write {out}: {blocker} is a file"):
        main(["export", "--ckpt", "does-not-exist.ckpt", "--budget", "2", "--out", str(out)])
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as a non-root user on a read-only folder
    with pytest.raises(PermissionError, match=f"cannot write {tmp_path / 'm.pt'}: folder {tmp_path} is not writable"):
        main(["export", "--ckpt", "does-not-exist.ckpt", "--budget", "2", "--out", str(tmp_path / "m.pt")])


def test_help_lists_every_subcommand_and_lightning_warns_nothing(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["esssm", "--help"])
    assert main() == 0
    text = capsys.readouterr().out
    for name in ["fit", "validate", "test", *TOOLS]:
        assert f"  {name} " in text
    assert "predict" not in text  # the task datamodules have no predict loader
    monkeypatch.setattr(sys, "argv", ["esssm", "fit", "--help"])
    with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit):
        warnings.simplefilter("always")
        main()
    assert "--trainer.max_epochs" in capsys.readouterr().out
    assert not [str(w.message) for w in caught if "not recommended" in str(w.message)]


def test_seq_len_shorter_than_the_data_fails_at_setup_with_the_fix(tmp_path):
    write_config(tmp_path)
    with pytest.raises(ValueError, match=r"up to 24 steps .*seq_len=16: set --model.backbone.init_args.seq_len 24"):
        fit(tmp_path, "--model.backbone.init_args.seq_len", "16")
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.e2e
def test_ddp_ranks_stop_together_when_one_rank_sees_nan(tmp_path):
    """One example is NaN, so one rank's loss is NaN and the other's finite: both ranks stop at
    that step (none hangs waiting for the other); skipping is refused up front under DDP, where
    Lightning cannot skip a step."""
    import json

    script = Path(__file__).parent / "ddp_nonfinite_script.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    outcomes = {}
    for skip in (0, 1):
        out = tmp_path / f"skip{skip}"
        proc = subprocess.run([sys.executable, str(script), str(skip), str(out)], env=env,
                              capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outcomes[skip] = [json.loads(Path(f"{out}.{rank}.json").read_text()) for rank in (0, 1)]
    step = outcomes[0][0]["step"]
    for outcome in outcomes[0]:
        assert outcome["error"].startswith(f"FloatingPointError: non-finite training loss at global step {step} ")
        assert outcome["step"] == step and outcome["finite"]
    losses = sorted(o["error"].split("loss in this process: ")[1].split(")")[0] for o in outcomes[0])
    assert losses[1] == "nan" and losses[0] != "nan"  # the rank with a finite loss stopped too
    assert all("needs a single process" in outcome["error"] for outcome in outcomes[1])
