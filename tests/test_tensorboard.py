"""What TensorBoard shows of a run: per-budget tags in budget order, the custom-scalars layout
(the test curve against k first, then one multiline chart over every k), and the test sweep as
a series whose step is k, so the curves of ES-SSM, the fixed-budget model and the Transformer
(a flat reference line) overlay on one chart, while the training run's own series (`epoch`) keep
every point. Checked in the event files and through TensorBoard's own HTTP API (a TensorBoard
server on a free local port, a few seconds)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2, metadata
from toy_data import ToyDataModule

from baselines import Transformer
from esssm.lab.sweep import run_sweep
from esssm.model import ESSSM
from esssm.train.callbacks import BudgetSweep
from esssm.train.lit import SequenceModule

K_MAX = 12
EPOCHS = 2


def train_runs(root: Path) -> dict[str, Path]:
    """Three tiny runs, as `./reproduce.sh` makes them: ES-SSM, the fixed-budget model (no budget
    dropout) and a Transformer (no budget), each fitted for 2 epochs (validation sweeps every k),
    then tested at every k by `run_sweep` in a fresh trainer logging into the same run folder;
    name -> run folder."""
    runs = {}
    for name in ("esssm", "fixed", "transformer"):
        L.seed_everything(0)
        backbone = (Transformer(d_model=16, n_layers=1, n_heads=2, max_len=24) if name == "transformer"
                    else ESSSM(d_model=16, n_layers=1, seq_len=24, k_max=K_MAX))
        task = SequenceModule(backbone, num_classes=3, vocab_size=8, lr=3e-3, ema_decay=0.9,
                            budget={"warmup_epochs": 0, "grid": None, "k_min": 1} if name == "esssm" else None)
        logger = TensorBoardLogger(root, name=name, version="seed0", default_hp_metric=False)
        trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=logger, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
                            callbacks=[BudgetSweep(every_n_epochs=1)])
        datamodule = ToyDataModule(train_size=48, val_size=21)
        trainer.fit(task, datamodule=datamodule)
        task.source = {"step": trainer.global_step}  # what load_module records of a checkpoint
        evaluation = TensorBoardLogger(root, name=name, version="seed0", default_hp_metric=False)
        run_sweep(task, datamodule, "all", accelerator="cpu", logger=evaluation,
                  reference_budgets=list(range(1, K_MAX + 1)))
        runs[name] = Path(logger.log_dir)
    return runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return train_runs(tmp_path_factory.mktemp("tb"))


def events(run: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def layout_of(run: Path) -> layout_pb2.Layout:
    accumulator = events(run)
    tensor = accumulator.Tensors(metadata.CONFIG_SUMMARY_TAG)[0].tensor_proto
    return layout_pb2.Layout.FromString(tensor.string_val[0])


def test_tags_sort_in_budget_order_and_every_k_is_logged(runs):
    tags = events(runs["esssm"]).Tags()["scalars"]
    per_budget = [t for t in tags if re.fullmatch(r"val/acc@k\d+", t)]
    assert sorted(per_budget) == [f"val/acc@k{k:02d}" for k in range(1, K_MAX + 1)]
    assert {f"test/acc@k{k:02d}" for k in range(1, K_MAX + 1)} <= set(tags)


def test_layout_opens_on_the_budget_curve_against_k(runs):
    first = layout_of(runs["esssm"]).category[0]
    assert first.title == "budget curves" and not first.closed  # the first category, expanded
    assert first.chart[0].title == "test acc vs budget k (x axis = k)"
    assert list(first.chart[0].multiline.tag) == [r"^test/acc_vs_k$"]


def test_test_sweep_leaves_the_training_epoch_series_alone(runs):
    """A fresh evaluation trainer would log epoch 0 at step 0, after which TensorBoard drops every
    training point of `epoch`; the test scalars sit at the trained step instead."""
    for run in runs.values():
        accumulator = events(run)
        epochs = accumulator.Scalars("epoch")
        steps = [p.step for p in epochs]
        assert steps == sorted(steps) and steps[-1] > 0 and len(epochs) > EPOCHS  # every training point
        assert {round(p.value) for p in epochs} == set(range(EPOCHS))  # no epoch logged by the test sweep
        last_logged = max(p.step for p in accumulator.Scalars("train/loss"))  # Lightning logs step n at n - 1
        assert [p.step for p in accumulator.Scalars("test/acc")] == [last_logged + 1]  # the global step


def test_transformer_is_a_flat_reference_line_on_the_k_chart(runs):
    points = events(runs["transformer"]).Scalars("test/acc_vs_k")
    assert [p.step for p in points] == list(range(1, K_MAX + 1))
    full = events(runs["transformer"]).Scalars("test/acc")[0].value
    assert [p.value for p in points] == pytest.approx([full] * K_MAX)


def test_custom_scalars_layout_has_one_multiline_chart_per_metric(runs):
    charts = {c.title: c for category in layout_of(runs["esssm"]).category for c in category.chart}
    accuracy = charts["val acc at every budget k"].multiline.tag
    assert [re.compile(r) for r in accuracy] and all(
        any(re.search(r, f"val/acc@k{k:02d}") for r in accuracy) for k in range(1, K_MAX + 1))
    assert not any(re.search(r, "val/acc") for r in accuracy)  # the per-budget lines only
    assert any(re.search(r, "val/loss@k07") for r in charts["val loss at every budget k"].multiline.tag)
    assert any(re.search(r, "test/acc_vs_k") for r in charts["test acc vs budget k (x axis = k)"].multiline.tag)


def test_test_sweep_is_a_series_over_k_in_every_run(runs):
    for name in ("esssm", "fixed"):
        run = runs[name]
        points = events(run).Scalars("test/acc_vs_k")
        assert [p.step for p in points] == list(range(1, K_MAX + 1))
        per_budget = {k: events(run).Scalars(f"test/acc@k{k:02d}")[0].value for k in range(1, K_MAX + 1)}
        assert [p.value for p in points] == pytest.approx([per_budget[k] for k in range(1, K_MAX + 1)])


# ----------------------------------------------------------------------------- TensorBoard server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tensorboard(logdir: Path, timeout: float = 90.0):
    """A TensorBoard server on a free local port over `logdir`; yields its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--port", str(port),
         "--host", "127.0.0.1", "--reload_interval", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if get_json(f"{url}/data/runs"):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"TensorBoard did not serve {logdir} on {url} within {timeout:.0f} s")
            time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_tensorboard_http_api_serves_the_layout_and_overlaid_curves(runs):
    logdir = runs["esssm"].parents[1]
    with tensorboard(logdir) as url:
        deadline = time.monotonic() + 60  # TensorBoard loads the event files in the background
        names = ["esssm/seed0", "fixed/seed0", "transformer/seed0"]
        while sorted(get_json(f"{url}/data/runs")) != names and time.monotonic() < deadline:
            time.sleep(1)
        tags = get_json(f"{url}/data/plugin/scalars/tags")
        assert set(tags) == set(names)
        for run, run_tags in tags.items():
            assert "test/acc_vs_k" in run_tags and (run == "transformer/seed0" or f"val/acc@k{K_MAX:02d}" in run_tags)
        layout = get_json(f"{url}/data/plugin/custom_scalars/layout")
        charts = {c["title"]: c for category in layout["category"] for c in category["chart"]}
        assert set(charts) >= {"val acc at every budget k", "val loss at every budget k",
                               "test acc vs budget k (x axis = k)"}
        for run in names:  # one tag, three runs: one chart with every curve
            points = get_json(f"{url}/data/plugin/scalars/scalars?run={run}&tag=test/acc_vs_k")
            assert [step for _, step, _ in points] == list(range(1, K_MAX + 1))
