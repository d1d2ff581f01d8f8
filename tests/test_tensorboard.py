"""What TensorBoard shows of a run: per-budget tags in budget order, the custom-scalars layout
(one multiline chart over every k), and the test sweep as a series whose step is k, so the
curves of ES-SSM and the fixed-budget model overlay on one chart. Checked in the event files
and through TensorBoard's own HTTP API (a TensorBoard server on a free local port, a few seconds)."""

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

from esssm.callbacks import BudgetSweep
from esssm.lit import SequenceTask
from esssm.model import ESSSM

K_MAX = 12


def train_runs(root: Path) -> dict[str, Path]:
    """Two tiny runs, ES-SSM and the fixed-budget model (no budget dropout), each fitted for 2
    epochs (validation sweeps every k) and then tested at every k; name -> run folder."""
    runs = {}
    for name, dropout in (("esssm", True), ("fixed", False)):
        L.seed_everything(0)
        backbone = ESSSM(d_model=16, n_layers=1, seq_len=24, k_max=K_MAX)
        task = SequenceTask(backbone, num_classes=3, vocab_size=8, lr=3e-3, ema_decay=0.9,
                            budget={"warmup_epochs": 0, "grid": None, "k_min": 1} if dropout else None)
        logger = TensorBoardLogger(root, name=name, version="seed0", default_hp_metric=False)
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=logger, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1,
                            callbacks=[BudgetSweep(every_n_epochs=1)])
        datamodule = ToyDataModule(train_size=48, val_size=21)
        trainer.fit(task, datamodule=datamodule)
        trainer.test(task, datamodule=datamodule, verbose=False)
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


def test_custom_scalars_layout_has_one_multiline_chart_per_metric(runs):
    charts = {c.title: c for category in layout_of(runs["esssm"]).category for c in category.chart}
    accuracy = charts["val acc at every budget k"].multiline.tag
    assert [re.compile(r) for r in accuracy] and all(
        any(re.search(r, f"val/acc@k{k:02d}") for r in accuracy) for k in range(1, K_MAX + 1))
    assert not any(re.search(r, "val/acc") for r in accuracy)  # the per-budget lines only
    assert any(re.search(r, "val/loss@k07") for r in charts["val loss at every budget k"].multiline.tag)
    assert any(re.search(r, "test/acc_vs_k") for r in charts["test acc vs budget k (x axis = k)"].multiline.tag)


def test_test_sweep_is_a_series_over_k_in_every_run(runs):
    for run in runs.values():
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
        while sorted(get_json(f"{url}/data/runs")) != ["esssm/seed0", "fixed/seed0"] and time.monotonic() < deadline:
            time.sleep(1)
        tags = get_json(f"{url}/data/plugin/scalars/tags")
        assert set(tags) == {"esssm/seed0", "fixed/seed0"}
        for run_tags in tags.values():
            assert "test/acc_vs_k" in run_tags and f"val/acc@k{K_MAX:02d}" in run_tags
        layout = get_json(f"{url}/data/plugin/custom_scalars/layout")
        charts = {c["title"]: c for category in layout["category"] for c in category["chart"]}
        assert set(charts) >= {"val acc at every budget k", "val loss at every budget k",
                               "test acc vs budget k (x axis = k)"}
        for run in ("esssm/seed0", "fixed/seed0"):  # one tag, two runs: one chart with both curves
            points = get_json(f"{url}/data/plugin/scalars/scalars?run={run}&tag=test/acc_vs_k")
            assert [step for _, step, _ in points] == list(range(1, K_MAX + 1))
