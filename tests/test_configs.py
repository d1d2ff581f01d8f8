"""Every config in conf/ parses through the CLI; baselines are sized within 10% of ES-SSM."""

from pathlib import Path

import pytest
import torch
import yaml

from baselines.stu import signed_filter_bank
from esssm.cli import main
from esssm.layer import ESSSMLayer
from esssm.commands import load_datamodule
from esssm.model import SequenceClassifier, build_module, count_parameters
from esssm.spectral import filter_scale, spectral_filters

CONF = Path(__file__).parents[1] / "conf"
CONFIGS = sorted(CONF.rglob("*.yaml"))
TASK_DIRS = sorted({p.parent for p in CONFIGS})


def test_there_is_a_config_for_every_task_and_model():
    for task in ("listops", "text", "retrieval", "scifar", "pathfinder", "speech"):
        names = {p.stem for p in (CONF / task).glob("*.yaml")}
        assert {"esssm", "fixed", "transformer", "mamba", "mamba2", "s4d", "arstu"} <= names
        assert {"esssm_nogate", "esssm_nodropout", "esssm_norms"} <= names
    for task in ("lm", "quick/lm"):  # language models: ES-SSM and the fixed-budget SSM
        assert {p.stem for p in (CONF / task).glob("*.yaml")} == {"esssm", "fixed"}
    assert {"esssm", "fixed", "transformer"} <= {p.stem for p in (CONF / "quick" / "listops").glob("*.yaml")}


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
        model = SequenceClassifier(
            build_module(config["model"]["backbone"]), data.num_classes, data.vocab_size, data.input_dim
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
