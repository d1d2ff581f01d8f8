"""Every config in conf/ parses through the CLI; baselines are sized within 10% of ES-SSM."""

import math
from pathlib import Path

import pytest
import torch
import yaml

from baselines.stu import signed_filter_bank
from esssm.budget import BudgetSampler
from esssm.lab.cli import main
from esssm.lab.loading import load_datamodule
from esssm.lab.reproduce import QUICK_LISTOPS
from esssm.layer import ESSSMLayer
from esssm.model import build_module, count_parameters
from esssm.objectives import objective_model
from esssm.spectral import filter_scale, spectral_filters

CONF = Path(__file__).parents[1] / "conf"
CONFIGS = sorted(CONF.rglob("*.yaml"))
TASK_DIRS = sorted({p.parent for p in CONFIGS})


def test_there_is_a_config_for_every_task_and_model():
    for task in ("listops", "text", "retrieval", "scifar", "pathfinder", "pathx", "speech"):
        names = {p.stem for p in (CONF / task).glob("*.yaml")}
        assert {"esssm", "fixed", "transformer", "mamba", "mamba2", "s4d", "arstu"} <= names
        assert {"esssm_sum", "esssm_nogate", "esssm_nodropout", "esssm_norms"} <= names
    spectral = {"esssm", "esssm_sum", "esssm_nogate", "esssm_nodropout", "esssm_norms", "fixed"}
    authors = {"esssm_authors", "esssm_sum_authors", "fixed_authors"}  # the authors' whole recipe
    for task, extra in (("lm", authors), ("quick/lm", set())):  # the spectral models and a causal Transformer
        assert {p.stem for p in (CONF / task).glob("*.yaml")} == spectral | {"transformer"} | extra
    assert spectral | {"transformer"} <= {p.stem for p in (CONF / "quick" / "listops").glob("*.yaml")}


@pytest.mark.parametrize("task", ["lm", "quick/lm"])
def test_language_model_transformer_is_causal(task):
    backbone = yaml.safe_load((CONF / task / "transformer.yaml").read_text())["model"]["backbone"]
    assert backbone["init_args"]["causal"] is True


@pytest.mark.parametrize("path", sorted(CONF.rglob("esssm_sum.yaml")), ids=lambda p: str(p.parent.relative_to(CONF)))
def test_elastic_plain_sum_has_unit_weights_and_budget_dropout(path):
    model = yaml.safe_load(path.read_text())["model"]
    assert model["backbone"]["init_args"]["layer"] == {"gate": False, "normalize": False}
    assert model["budget"], "the elastic plain sum trains under budget dropout"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONF)))
def test_config_parses_through_the_cli(path, capsys, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning"])  # as typed: `lightning fit --config PATH`
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(path), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["backbone"]["class_path"]


def whole_model_params(path: Path) -> int:
    config = yaml.safe_load(path.read_text())
    data = load_datamodule(path)  # reads no files: the facts are known at construction
    with torch.device("meta"):  # count without allocating ~20M parameters per config
        model = objective_model(
            data.objective, build_module(config["model"]["backbone"]), data.num_classes, data.vocab_size, data.input_dim
        )
    return count_parameters(model)


@pytest.mark.parametrize("task_dir", TASK_DIRS, ids=lambda p: str(p.relative_to(CONF)))
def test_baselines_match_esssm_size_within_ten_percent(task_dir):
    target = whole_model_params(task_dir / "esssm.yaml")
    for path in sorted(task_dir.glob("*.yaml")):
        ratio = whole_model_params(path) / target
        assert 0.9 <= ratio <= 1.1, f"{path.name}: {ratio:.3f} x the ES-SSM parameter count"


def filter_shapes() -> list[tuple[int, int]]:
    """Every (seq_len, number of filters) a config in conf/ builds spectral filters for."""
    shapes = set()
    for path in CONFIGS:
        args = yaml.safe_load(path.read_text())["model"]["backbone"]["init_args"]
        filters = args.get("k_max", args.get("num_filters"))
        if filters is not None:
            shapes.add((args["seq_len"], filters))
    return sorted(shapes)


def test_the_filter_shape_list_covers_the_round_off_case():
    assert (1024, 32) in filter_shapes()  # sCIFAR/Pathfinder: 4 eigenvalues come out negative


@pytest.mark.parametrize("seq_len,k_max", filter_shapes())
def test_every_config_filter_bank_is_finite_at_every_budget(seq_len, k_max):
    """Scales sigma^(1/4) are finite and positive and a layer is finite at every budget 1..k_max,
    at the config's real length (the width is small: the filters are what can go wrong)."""
    sigma, _ = spectral_filters(seq_len, k_max)
    scale = filter_scale(torch.from_numpy(sigma))
    assert torch.isfinite(scale).all() and (scale > 0).all()
    torch.manual_seed(0)
    layer = ESSSMLayer(4, seq_len, k_max)
    u = torch.randn(1, seq_len, 4)
    with torch.no_grad():
        for k in range(1, k_max + 1):
            assert torch.isfinite(layer(u, budget=k)).all(), f"non-finite output at k={k}"
    assert torch.isfinite(signed_filter_bank(seq_len, k_max)).all()  # AR-STU's scaled bank


def training_examples(path: Path) -> int:
    """Training examples of the data set a config trains on (the real sets; the quick profile's own)."""
    task = str(path.parent.relative_to(CONF))
    data = yaml.safe_load(path.read_text())["data"]["init_args"]
    if task == "quick/listops":
        return QUICK_LISTOPS["train"]
    if task == "quick/lm":
        return data["max_bytes"] // data["seq_len"]
    return load_datamodule(path).train_examples


ELASTIC = [p for p in CONFIGS if yaml.safe_load(p.read_text())["model"].get("budget", {}) is not None
           and "k_max" in yaml.safe_load(p.read_text())["model"]["backbone"]["init_args"]]


@pytest.mark.parametrize("path", ELASTIC, ids=lambda p: str(p.relative_to(CONF)))
def test_budget_dropout_starts_well_before_training_ends(path):
    """The sampler the config builds draws budgets below k_max by half-way through training."""
    config = yaml.safe_load(path.read_text())
    model, trainer = config["model"], config["trainer"]
    budget = model.get("budget", {})
    sampler = BudgetSampler(model["backbone"]["init_args"]["k_max"],
                            warmup_epochs=budget.get("warmup_epochs"), warmup_steps=budget.get("warmup_steps"))
    batches = math.ceil(training_examples(path) / config["data"]["init_args"]["batch_size"])
    steps_per_epoch = math.ceil(batches / trainer.get("accumulate_grad_batches", 1))
    total = min(trainer["max_epochs"] * steps_per_epoch if trainer["max_epochs"] != -1 else math.inf,
                trainer.get("max_steps", -1) if trainer.get("max_steps", -1) != -1 else math.inf)
    start = sampler.dropout_start(steps_per_epoch)
    assert start <= total / 2, f"budget dropout starts at step {start} of {total}"
    epoch = start // steps_per_epoch
    assert any(sampler.sample(step, epoch) < sampler.k_max for step in range(start, start + 16))


def test_lm_config_is_the_authors_shape():
    config = yaml.safe_load((CONF / "lm" / "esssm.yaml").read_text())
    data, trainer, model = config["data"]["init_args"], config["trainer"], config["model"]
    assert data["seq_len"] == model["backbone"]["init_args"]["seq_len"] == 4096
    assert data["seq_len"] * data["batch_size"] * trainer["accumulate_grad_batches"] == 65_536
    assert model["budget"]["warmup_steps"] == 8000 and "warmup_epochs" not in model["budget"]
    assert sorted(config["sweep"]["val_budgets"]) == [2, 3, 4, 6, 8, 12, 16, 24, 32]
    assert config["sweep"]["test_budgets"] == "all"


@pytest.mark.parametrize("model", ["esssm", "esssm_sum", "fixed"])
def test_lm_authors_configs_are_the_authors_whole_recipe(model):
    """1.2M optimizer steps, warm-up 72,000 then cosine to 0.1x at 1.2M, early stopping on bits
    per byte at K_max (patience 10, min_delta 1e-4), validation every 4,000 updates on 25 batches
    (100 segments) of 1,024 cached per split, the curve every 12,000 steps, the test at K_max
    only, TF32 matmuls; the rest as conf/lm/<model>.yaml."""
    from esssm.train.lit import warmup_cosine

    config = yaml.safe_load((CONF / "lm" / f"{model}_authors.yaml").read_text())
    base = yaml.safe_load((CONF / "lm" / f"{model}.yaml").read_text())
    trainer, model_args, data = config["trainer"], config["model"], config["data"]["init_args"]
    assert (trainer["max_epochs"], trainer["max_steps"]) == (-1, 1_200_000)
    warmup = round(model_args["warmup_ratio"] * trainer["max_steps"])
    schedule = warmup_cosine(trainer["max_steps"], warmup, model_args.get("min_lr_ratio", 0.1))
    assert warmup == 72_000 and schedule(warmup - 1) == 1.0
    assert schedule(trainer["max_steps"]) == pytest.approx(0.1)
    assert config["early_stopping"] == {"enabled": True, "monitor": "val/bpb", "mode": "min",
                                        "patience": 10, "min_delta": 1e-4}
    updates_per_validation = trainer["val_check_interval"] // trainer["accumulate_grad_batches"]
    assert updates_per_validation == 4000 and config["sweep"]["every_n_steps"] == 3 * updates_per_validation
    assert config["sweep"]["every_n_epochs"] is None
    assert trainer["limit_val_batches"] * data["batch_size"] == 100 and data["eval_segments"] == 1024
    assert config["sweep"]["test_budgets"] == [model_args["backbone"]["init_args"]["k_max"]]
    assert config["checkpoint"] == {"monitor": "val/bpb", "mode": "min"}  # the best EMA weights are tested
    assert config["matmul_precision"] == base["matmul_precision"] == "high"
    assert model_args == base["model"] and config["sweep"]["val_budgets"] == base["sweep"]["val_budgets"]


def test_early_stopping_of_every_lm_config_watches_bits_per_byte():
    for path in sorted(CONF.glob("lm/*.yaml")) + sorted(CONF.glob("quick/lm/*.yaml")):
        stopping = yaml.safe_load(path.read_text())["early_stopping"]
        assert (stopping["monitor"], stopping["mode"]) == ("val/bpb", "min"), path
        assert stopping.get("enabled", False) == path.stem.endswith("_authors"), path


def test_pathx_configs_are_128_by_128():
    for path in sorted((CONF / "pathx").glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        assert config["data"]["init_args"]["resolution"] == 128, path
        assert load_datamodule(path).seq_len == 16384, path
        args = config["model"]["backbone"]["init_args"]
        assert args.get("seq_len", args.get("max_len", 16384)) == 16384, path


@pytest.mark.parametrize("task, micro, per_update", [("retrieval", 8, 16), ("speech", 2, 16), ("pathx", 2, 16)])
def test_long_tasks_train_16_examples_per_update_in_micro_batches(task, micro, per_update):
    """Every model of Retrieval, Speech and Path-X updates on 16 examples, fed in micro-batches
    small enough for one 80 GB GPU (16 at once is 128k or 256k tokens; conf/make_configs.py)."""
    for path in sorted((CONF / task).glob("*.yaml")):
        config = yaml.safe_load(path.read_text())
        batch = config["data"]["init_args"]["batch_size"]
        assert batch == micro, path
        assert batch * config["trainer"]["accumulate_grad_batches"] == per_update, path


@pytest.mark.parametrize("path", sorted((CONF / "quick").rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONF)))
def test_quick_configs_sweep_every_budget_at_two_epochs_at_least(path):
    """BudgetSweep sweeps every k on each every_n_epochs-th epoch and the last: the quick profile
    must sweep at an earlier epoch too, so each per-k validation chart has a line, not a dot."""
    config = yaml.safe_load(path.read_text())
    epochs, every = config["trainer"]["max_epochs"], config["sweep"]["every_n_epochs"]
    swept = {e for e in range(1, epochs + 1) if e % every == 0} | {epochs}
    assert len(swept) >= 2 and config["sweep"]["val_budgets"] == "all", (epochs, every)
