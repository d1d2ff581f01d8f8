"""The full-profile smoke: real configs, real sequence lengths, release-format sample data, a
small width; every budget finite; a non-finite value fails naming the config."""

from pathlib import Path

import pytest
import torch

from datamodules import ByteLMDataModule
from esssm.lab import smoke
from esssm.model import ESSSM
from esssm.train.lit import SequenceModule

CONF = smoke.REPO / "conf"
# Every task with ES-SSM; every baseline kind once (sCIFAR, L = 1024); the LM's fixed-budget SSM.
PLANS = [(task, "esssm") for task in ("listops", "text", "retrieval", "scifar", "pathfinder", "speech", "lm")]
PLANS += [("scifar", m) for m in ("fixed", "transformer", "mamba", "mamba2", "s4d", "arstu")] + [("lm", "fixed")]


ALL_CONFIGS = [(p.parent.name, p.stem) for p in sorted(CONF.glob("*/*.yaml")) if p.parent.name != "quick"]
SLOW_PLANS = [plan for plan in ALL_CONFIGS if plan not in PLANS]


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smoke-data")


def check_config(task: str, model: str, sample_root: Path) -> None:
    config = CONF / task / f"{model}.yaml"
    data_dir = smoke.write_samples(task, sample_root / task, 6)
    torch.set_num_threads(1)
    record = smoke.run_config(config, task, data_dir, batch=1, in_process=True, width=(16, 1))
    facts = smoke.config_facts(config)
    assert len(record["step_seconds"]) == 2 and all(t > 0 for t in record["step_seconds"])
    expected = list(range(1, facts["k_max"] + 1)) if facts["k_max"] else ["full"]
    assert record["budgets"] == expected  # every budget of the validation batch was finite
    assert record["params"] > 0 and record["peak_memory_mb"] > 0
    row = smoke.projection_row(task, model, config, record, 1, "test")
    assert row["s_per_step_at_config_batch"] == pytest.approx(record["step_seconds"][-1] * facts["batch"])
    assert row["full_run_steps"] == smoke.full_run_steps(facts) > 0
    assert f"| {task}/{model} | {facts['seq_len']} |" in smoke.smoke_table([row], [], "test", "cmd")


@pytest.mark.parametrize("task,model", PLANS, ids=lambda v: v)
def test_config_runs_two_steps_at_its_real_length(task, model, sample_root):
    check_config(task, model, sample_root)


@pytest.mark.slow
@pytest.mark.parametrize("task,model", SLOW_PLANS, ids=lambda v: v)
def test_every_other_config_runs_two_steps_at_its_real_length(task, model, sample_root):
    """The rest of conf/ (every task x model) on the same path: minutes, so kept out of the default run."""
    check_config(task, model, sample_root)


def test_full_run_steps_of_the_lm_count_optimizer_steps():
    facts = smoke.config_facts(CONF / "lm" / "esssm.yaml")
    segments = ByteLMDataModule.PG19_TRAIN_BYTES // 4096
    assert smoke.full_run_steps(facts) == -(-(-(-segments // 4)) // 4)  # ceil(ceil(n/4)/4)


def test_non_finite_logits_fail_naming_the_config(tmp_path, monkeypatch):
    task = SequenceModule(ESSSM(d_model=8, n_layers=1, seq_len=16, k_max=4), num_classes=3, vocab_size=9)
    probe = smoke.SmokeProbe("conf/x/esssm.yaml", str(tmp_path / "probe.json"))
    real = task.evaluate
    monkeypatch.setattr(task, "evaluate", lambda batch, k: real(batch, k) * (float("nan") if k == 3 else 1.0))
    batch = {"x": torch.randint(1, 9, (2, 16)), "y": torch.tensor([0, 1]), "index": torch.arange(2)}
    trainer = type("Trainer", (), {"sanity_checking": False})()
    with pytest.raises(FloatingPointError, match=r"conf/x/esssm.yaml: non-finite logits at budget 3"):
        probe.on_validation_batch_end(trainer, task, None, batch, 0)


def test_paper_budgets_option_checks_the_paper_grid(sample_root):
    config = CONF / "scifar" / "esssm.yaml"
    data_dir = smoke.write_samples("scifar", sample_root / "scifar", 6)
    record = smoke.run_config(config, "scifar", data_dir, batch=1, in_process=True, width=(16, 1), budgets="paper")
    assert record["budgets"] == [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]


def test_full_run_steps_stop_at_max_steps_and_count_pathx_epochs():
    authors = smoke.config_facts(CONF / "lm" / "esssm_authors.yaml")
    assert (authors["epochs"], smoke.full_run_steps(authors)) == (-1, 1_200_000)
    pathx = smoke.config_facts(CONF / "pathx" / "esssm.yaml")
    assert smoke.full_run_steps(pathx) == 50 * (160_000 // 2 // 8)  # S4's 500,000 steps
    with pytest.raises(ValueError, match="neither max_epochs nor max_steps"):
        smoke.full_run_steps({**authors, "max_steps": -1})
