"""MLflow and W&B through the CLI's logger setting, offline (a local MLflow file store, W&B's
offline mode): every budget's metrics, the step = k test curve and the budget-curve figure
reach the tracker. W&B is not in the [dev] extra: its test runs where `wandb` is installed."""

import sys

import pytest
import yaml
from test_cli import write_config

from esssm.lab.cli import lightning_main
from esssm.train.trackers import mlflow_name

pytestmark = pytest.mark.usefixtures("one_thread")


def config_with_loggers(tmp_path, *loggers: dict):
    """The toy config logging to TensorBoard (first: it names the run folder) and `loggers`."""
    config = yaml.safe_load(write_config(tmp_path).read_text())
    config["trainer"]["logger"] = [config["trainer"]["logger"], *loggers]
    path = tmp_path / "toy_trackers.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def fit_then_test(tmp_path, config) -> None:
    """One epoch of the toy fit, then `lightning test` of its last checkpoint."""
    lightning_main(["fit", "--config", str(config), "--trainer.max_epochs", "1"])
    last = tmp_path / "runs" / "toy" / "run1" / "checkpoints" / "last.ckpt"
    lightning_main(["test", "--config", str(config), "--ckpt_path", str(last)])


def test_mlflow_names_keep_the_budget():
    assert mlflow_name("val/acc@k07") == "val/acc_at_k07" and mlflow_name("val/acc") == "val/acc"


def test_fit_and_test_log_budget_curves_to_a_local_mlflow_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="MLflow is in the [dev] extra (mlflow-skinny)")
    monkeypatch.setattr(sys, "argv", ["lightning"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # nothing but the store below
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for this to use a local folder
    store = f"file:{tmp_path / 'mlruns'}"
    fit_then_test(tmp_path, config_with_loggers(tmp_path, {
        "class_path": "esssm.train.trackers.MLFlowLogger", "init_args": {"tracking_uri": store, "experiment_name": "toy"}}))

    client = mlflow.tracking.MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name("toy")
    fit_run, test_run = sorted(client.search_runs([experiment.experiment_id]), key=lambda r: r.info.start_time)
    budgets = range(1, 5)  # the toy model's k_max is 4
    for stage, run in (("val", fit_run), ("test", test_run)):
        logged = set(run.data.metrics)
        assert {f"{stage}/acc_at_k{k}" for k in budgets} | {f"{stage}/loss_at_k{k}" for k in budgets} <= logged
        assert {f"{stage}/budget_auc", f"{stage}/k98", f"{stage}/acc"} <= logged
        assert all(0.0 <= run.data.metrics[f"{stage}/acc_at_k{k}"] <= 1.0 for k in budgets)
        figures = [a.path for a in client.list_artifacts(run.info.run_id, stage)]
        assert any(p.startswith(f"{stage}/budget_curve_step") and p.endswith(".png") for p in figures), figures
    series = client.get_metric_history(test_run.info.run_id, "test/acc_vs_k")
    assert sorted(m.step for m in series) == list(budgets)  # step = k
    by_k = {m.step: m.value for m in series}
    assert all(by_k[k] == pytest.approx(test_run.data.metrics[f"test/acc_at_k{k}"]) for k in budgets)


def test_fit_and_test_log_budget_curves_to_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="W&B is optional: pip install wandb")
    monkeypatch.setattr(sys, "argv", ["lightning"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb_logger = {"class_path": "lightning.pytorch.loggers.WandbLogger",
                    "init_args": {"save_dir": str(tmp_path / "wandb"), "project": "toy", "offline": True}}
    fit_then_test(tmp_path, config_with_loggers(tmp_path, wandb_logger))
    # W&B names an image file <key>_<step>_<hash>.png under media/images/<stage>/
    images = {f"{p.parent.name}/{p.name.rsplit('_', 2)[0]}" for p in (tmp_path / "wandb").rglob("media/images/*/*.png")}
    assert {"val/budget_curve", "test/budget_curve"} <= images, images
    assert list((tmp_path / "wandb").rglob("run-*.wandb"))  # the offline run, for `wandb sync`
