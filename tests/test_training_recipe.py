"""The run settings the authors' recipe needs, on any config: early stopping, the float32
matmul precision and a validation budget sweep scheduled in optimizer steps."""

import sys

import pytest
import torch
from test_cli import write_config

from esssm.lab.cli import lightning_main
from esssm.train.callbacks import BudgetSweep

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fit(tmp_path, monkeypatch):
    """`lightning fit --config toy.yaml ARGS` in tmp_path: the run folder, and its last.ckpt."""
    monkeypatch.setattr(sys, "argv", ["lightning"])
    monkeypatch.chdir(tmp_path)
    config = write_config(tmp_path)

    def run(*args: str, version: str = "run1"):
        lightning_main(["fit", "--config", str(config), "--trainer.logger.init_args.version", version, *args])
        run_dir = tmp_path / "runs" / "toy" / version
        return run_dir, torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)

    return run


def test_early_stopping_stops_the_fit_only_when_enabled(fit):
    # 64 examples in batches of 16: 4 steps an epoch. No improvement of 10 in accuracy is
    # possible, so with patience 1 the second validation stops the fit.
    stop = ["--trainer.max_epochs", "5", "--early_stopping.patience", "1", "--early_stopping.min_delta", "10"]
    _, stopped = fit(*stop, "--early_stopping.enabled", "true", version="on")
    assert (stopped["epoch"], stopped["global_step"]) == (1, 8)
    state = next(v for k, v in stopped["callbacks"].items() if k.startswith("OptionalEarlyStopping"))
    assert state["stopped_epoch"] == 1 and state["wait_count"] == 1
    _, full = fit(*stop, version="off")  # the same setting, not enabled: all 5 epochs
    assert (full["epoch"], full["global_step"]) == (4, 20)


def test_early_stopping_is_off_by_default_and_can_monitor_bits_per_byte(fit, capsys):
    import yaml

    with pytest.raises(SystemExit):
        fit("--print_config", "--early_stopping.monitor", "val/bpb", "--early_stopping.mode", "min")
    printed = yaml.safe_load(capsys.readouterr().out)["early_stopping"]
    assert (printed["enabled"], printed["monitor"], printed["mode"]) == (False, "val/bpb", "min")
    assert printed["check_on_train_epoch_end"] is False  # checked after each validation pass


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_matmul_precision_sets_torch_and_is_validated(fit, precision):
    before = torch.get_float32_matmul_precision()
    try:
        fit("--trainer.max_steps", "1", "--matmul_precision", precision)
        assert torch.get_float32_matmul_precision() == precision
    finally:
        torch.set_float32_matmul_precision(before)
    with pytest.raises(SystemExit):  # jsonargparse names the setting and its choices
        fit("--matmul_precision", "tf32", version="bad")
    assert torch.get_float32_matmul_precision() == before


def test_validation_sweep_every_n_steps(tmp_path):
    """Validating every 2 steps and sweeping every 4: sweeps at steps 4 and 8 and at max_steps 10."""
    import lightning as L
    from test_lit import make_task, trainer
    from toy_data import ToyDataModule

    sweep, validated, swept = BudgetSweep([1, 4], every_n_epochs=None, every_n_steps=4), [], []

    class Record(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                validated.append(trainer.global_step)
                if sweep.swept_step == trainer.global_step:
                    swept.append(trainer.global_step)

    fit = trainer(tmp_path, max_epochs=None, max_steps=10, val_check_interval=2, callbacks=[sweep, Record()])
    fit.fit(make_task(), ToyDataModule(train_size=64))
    assert validated == [2, 4, 6, 8, 10] and swept == [4, 8, 10]


@pytest.mark.parametrize("epochs, steps, message", [
    (10, 4, "set exactly one validation-sweep schedule"),
    (None, None, "set exactly one validation-sweep schedule"),
    (None, 0, "sweep.every_n_steps must be >= 1"),
    (0, None, "sweep.every_n_epochs must be >= 1"),
])
def test_sweep_schedule_is_validated(epochs, steps, message):
    with pytest.raises(ValueError, match=message):
        BudgetSweep(every_n_epochs=epochs, every_n_steps=steps)
