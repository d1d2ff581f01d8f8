"""Lightning stack: budget-dropout training that learns, the budget sweep, resume, EMA."""

import csv

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from esssm.budget import BudgetSampler, curve_summary, sweep_budgets
from esssm.model import ESSSM
from esssm.train.callbacks import BudgetSweep
from esssm.train.lit import SequenceModule, parameter_groups, warmup_cosine
from esssm.train.metrics import ExactAccuracy
from toy_data import ToyDataModule


class BudgetSpy(L.Callback):
    """Records (global step, training budget) for every training micro-batch."""

    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.global_step, pl_module.current_budget()))


def make_task(**kw) -> SequenceModule:
    backbone = ESSSM(d_model=32, n_layers=2, seq_len=24, k_max=8, dropout=0.0, drop_path=0.0)
    args = dict(num_classes=3, vocab_size=8, lr=3e-3, ema_decay=None, budget={"warmup_epochs": 0})
    return SequenceModule(backbone, **{**args, **kw})


def trainer(tmp_path, **kw) -> L.Trainer:
    args = dict(
        default_root_dir=tmp_path, accelerator="cpu", devices=1, max_epochs=4,
        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
        logger=L.pytorch.loggers.CSVLogger(tmp_path), callbacks=[BudgetSweep([1, 2, 4, 8])],
    )
    return L.Trainer(**{**args, **kw})


def test_training_learns_and_sweep_logs_every_budget(tmp_path):
    L.seed_everything(0)
    task, data = make_task(), ToyDataModule()
    fit = trainer(tmp_path)
    fit.fit(task, data)
    metrics = fit.callback_metrics
    for k in (1, 2, 4, 8):
        assert f"val/acc@k{k}" in metrics and f"val/loss@k{k}" in metrics
    assert metrics["val/acc@k8"] > 0.8  # chance is 1/3
    assert metrics["val/acc"] == metrics["val/acc@k8"]
    assert {"val/budget_auc", "val/k98"} <= set(metrics)
    rows = list(csv.DictReader(open(BudgetSweep.output_dir(fit) / "budget_curve_val.csv")))
    assert [r["budget"] for r in rows] == ["1", "2", "4", "8"]
    assert all(int(r["count"]) == 61 for r in rows)
    logged = open(next(tmp_path.rglob("metrics.csv"))).read()
    assert "train/budget" in logged


def test_budget_per_step_is_the_sampler_draw_and_shared_by_accumulation(tmp_path):
    task = make_task(budget={"warmup_epochs": 0, "full_every": 3})
    spy = BudgetSpy()
    trainer(tmp_path, max_steps=6, accumulate_grad_batches=2, callbacks=[spy]).fit(task, ToyDataModule())
    seen = spy.seen
    sampler = BudgetSampler(8, grid=task.sampler.grid, full_every=3, warmup_epochs=0)
    assert len(seen) == 12 and [s for s, _ in seen] == [s // 2 for s in range(12)]
    assert all(k == sampler.sample(step) for step, k in seen)
    assert len({k for _, k in seen}) > 1


def test_baseline_without_budget_trains_and_sweeps_once(tmp_path):
    from esssm.model import SequenceBackbone, records_init_args

    class MeanMixer(torch.nn.Module):
        def forward(self, x, mask=None, budget=None):
            return torch.cumsum(x, 1) / torch.arange(1, x.shape[1] + 1).view(1, -1, 1)

    @records_init_args
    class Cumulative(SequenceBackbone):
        def __init__(self, d_model: int = 16):
            super().__init__(lambda i: MeanMixer(), d_model, 1)

    task = SequenceModule(Cumulative(), num_classes=3, vocab_size=8, ema_decay=None)
    fit = trainer(tmp_path, max_epochs=1)
    fit.fit(task, ToyDataModule())
    assert "val/acc@kfull" in fit.callback_metrics


def test_resume_restores_step_budget_sequence_and_ema(tmp_path):
    L.seed_everything(0)
    task = make_task(ema_decay=0.9)
    first = trainer(tmp_path / "a", max_steps=10, callbacks=[], val_check_interval=5)
    first.fit(task, ToyDataModule())
    ckpt = tmp_path / "mid.ckpt"
    first.save_checkpoint(ckpt)
    resumed_task = make_task(ema_decay=0.9)
    spy = BudgetSpy()
    resumed = trainer(tmp_path / "b", max_steps=20, callbacks=[spy])
    resumed.fit(resumed_task, ToyDataModule(), ckpt_path=ckpt)
    assert resumed.global_step == 20 and spy.seen[0][0] == 10
    expected = BudgetSampler(8, grid=resumed_task.sampler.grid, warmup_epochs=0)
    assert [k for _, k in spy.seen] == [expected.sample(s, resumed_task.current_epoch) for s, _ in spy.seen]
    assert int(resumed_task.ema.n_averaged) == 20
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert any(key.startswith("ema.module.") for key in state)


def test_ema_weights_are_used_for_evaluation(tmp_path):
    L.seed_everything(0)
    task, data = make_task(ema_decay=0.5), ToyDataModule()
    trainer(tmp_path, max_steps=5, limit_val_batches=0, logger=False, callbacks=[]).fit(task, data)
    task.eval()
    ema_logits, model_logits, labels = [], [], []
    with torch.no_grad():
        for batch in data.val_dataloader():
            ema_logits.append(task.ema.module(batch["x"], batch["mask"]))
            model_logits.append(task.model(batch["x"], batch["mask"]))
            labels.append(batch["y"])
            assert torch.equal(task.evaluate(batch, None), ema_logits[-1])
            assert not torch.allclose(ema_logits[-1], model_logits[-1])
    ema_loss = F.cross_entropy(torch.cat(ema_logits), torch.cat(labels)).item()
    model_loss = F.cross_entropy(torch.cat(model_logits), torch.cat(labels)).item()
    assert ema_loss != pytest.approx(model_loss, rel=1e-3)
    # the validation loop logs the EMA weights' loss over the whole validation set
    (metrics,) = trainer(tmp_path, logger=False, callbacks=[]).validate(task, data, verbose=False)
    assert metrics["val/loss"] == pytest.approx(ema_loss, rel=1e-5)


def test_parameter_groups_skip_decay_on_biases_norms_embeddings():
    task = make_task()
    decay, no_decay = parameter_groups(task.model, 0.03)
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert id(task.model.encoder.proj.weight) in no_decay_ids
    assert id(task.model.backbone.blocks[0].norm1.weight) in no_decay_ids
    assert id(task.model.backbone.blocks[0].mixer.mix) not in no_decay_ids
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == sum(
        p.numel() for p in task.model.parameters()
    )


def test_warmup_cosine_schedule():
    f = warmup_cosine(100, 10, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(100) == pytest.approx(0.1)
    assert 0.1 < f(55) < 1.0


def test_exact_accuracy_counts_each_index_once():
    metric = ExactAccuracy()
    metric.update(torch.tensor([0, 1, 2]), torch.tensor([True, False, True]), torch.ones(3))
    metric.update(torch.tensor([2, 0]), torch.tensor([True, True]), torch.ones(2))  # padding repeats
    result = metric.compute()
    assert result["count"] == 3 and result["acc"] == pytest.approx(2 / 3)


def test_sweep_budgets_and_curve_summary():
    assert sweep_budgets(None) == [None]
    assert sweep_budgets(8) == [1, 2, 3, 4, 6, 8]
    assert sweep_budgets(4, "all") == [1, 2, 3, 4]
    assert sweep_budgets(32, [4, 2]) == [2, 4, 32]
    with pytest.raises(ValueError, match="outside"):
        sweep_budgets(8, [16])
    summary = curve_summary([1, 2, 4], [0.5, 0.99, 1.0])
    assert summary["k98"] == 2 and summary["full"] == 1.0
    assert summary["auc"] == pytest.approx(((0.5 + 0.99) / 2 + (0.99 + 1.0) / 2) / 2)


def test_budget_curve_figure_places_baselines_beside_the_curves():
    from esssm.plots import plot_budget_curve

    rows = [{"budget": k, "acc": 0.1 * k, "active_params": 100 * k} for k in (1, 2, 4)]
    figure = plot_budget_curve({"esssm": rows}, references={"transformer": (350, 0.5)})
    by_k, by_params = figure.axes
    assert list(by_k.lines[0].get_ydata()) == pytest.approx([10.0, 20.0, 40.0])  # in percent
    level = by_k.lines[-1]  # the baseline's accuracy as a level across every k
    assert level.get_label() == "transformer" and list(level.get_ydata()) == [50.0, 50.0]
    star = by_params.lines[-1]  # and as one point at its parameter count
    assert list(star.get_xdata()) == [350] and list(star.get_ydata()) == [50.0]
    assert [t.get_text() for t in by_params.get_legend().get_texts()] == ["esssm", "transformer"]


class SweepRecorder(L.Callback):
    """Records the global step of every validation pass while fitting."""

    def __init__(self):
        self.validations = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.validations.append(trainer.global_step)


def curve_rows(fit: L.Trainer) -> list[dict]:
    return list(csv.DictReader(open(BudgetSweep.output_dir(fit) / "budget_curve_val.csv")))


def logged_budget_steps(tmp_path) -> set[int]:
    """The steps at which val/acc@k1 reached the CSV logger."""
    rows = csv.DictReader(open(next(tmp_path.rglob("metrics.csv"))))
    return {int(r["step"]) for r in rows if r.get("val/acc@k1")}


@pytest.mark.parametrize(
    "stop",
    [
        {"max_epochs": 40, "max_steps": 6},  # mid-epoch, before any validation: swept at the end
        {"max_epochs": 40, "max_steps": 16},  # the validation at max_steps is the sweep itself
        {"max_epochs": 40, "callbacks_stop": "early"},  # early stopping long before epoch 10
        {"max_epochs": 40, "max_time": {"seconds": 3}},  # out of time after 3 steps (a fake clock)
    ],
    ids=["max_steps_mid_epoch", "max_steps_at_validation", "early_stopping", "max_time"],
)
@pytest.mark.e2e
def test_every_fit_ends_with_a_budget_curve_however_it_stops(tmp_path, stop, monkeypatch):
    from types import SimpleNamespace

    import lightning.pytorch.callbacks.timer as timer
    from lightning.pytorch.callbacks import EarlyStopping

    stop = dict(stop)
    sweep, recorder = BudgetSweep([1, 2, 4, 8], every_n_epochs=10), SweepRecorder()
    clock = SimpleNamespace(now=0.0)  # Lightning's Timer reads this clock: one second per training step
    monkeypatch.setattr(timer, "time", SimpleNamespace(monotonic=lambda: clock.now))

    class Tick(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            clock.now += 1.0

    callbacks = [Tick(), sweep, recorder]
    if stop.pop("callbacks_stop", None):
        callbacks.append(EarlyStopping("val/loss", patience=1, min_delta=10.0))
    fit = trainer(tmp_path, callbacks=callbacks, **stop)
    fit.fit(make_task(), ToyDataModule())
    assert fit.current_epoch < 9  # stopped before the scheduled sweep epoch
    rows = curve_rows(fit)
    assert [r["budget"] for r in rows] == ["1", "2", "4", "8"]
    assert {r["step"] for r in rows} == {str(fit.global_step)} and all(int(r["count"]) == 61 for r in rows)
    # logged once, at the end (inside a validation Lightning logs at the step before the last one)
    assert logged_budget_steps(tmp_path) in ({fit.global_step}, {fit.global_step - 1})
    assert {"val/acc@k1", "val/budget_auc"} <= set(fit.callback_metrics)
    if recorder.validations and recorder.validations[-1] == fit.global_step and "max_steps" in stop:
        assert sweep.swept_step == fit.global_step  # swept inside that validation, not a second time


def test_sigterm_right_after_a_validation_sweeps_those_weights(tmp_path):
    """A stop signal arriving during a mid-epoch validation (and its checkpoint): Lightning stops
    the fit with SIGTERMException after that validation; its weights are swept before it ends."""
    import os
    import signal

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class Signal(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking and trainer.global_step == 6:
                os.kill(os.getpid(), signal.SIGTERM)

    fit = trainer(tmp_path, max_epochs=40, val_check_interval=3,
                  callbacks=[BudgetSweep([1, 2, 4, 8], every_n_epochs=10), Signal()])
    with pytest.raises(SIGTERMException):
        fit.fit(make_task(), ToyDataModule())
    assert fit.global_step == 6 and {r["step"] for r in curve_rows(fit)} == {"6"}


def test_a_fit_without_validation_data_ends_cleanly_without_a_curve(tmp_path):
    from torch.utils.data import DataLoader

    from toy_data import ToyDataset, collate

    fit = trainer(tmp_path, max_steps=3, callbacks=[BudgetSweep([1, 8], every_n_epochs=10)])
    fit.fit(make_task(), train_dataloaders=DataLoader(ToyDataset(64, 24, 3, 0), 16, collate_fn=collate))
    assert fit.global_step == 3 and not list(tmp_path.rglob("budget_curve_val.csv"))
