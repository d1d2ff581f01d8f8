"""Every config in conf/ parses through the CLI; baselines are sized within 10% of ES-SSM."""

from pathlib import Path

import pytest
import torch
import yaml

from esssm.cli import main
from esssm.commands import load_datamodule
from esssm.model import SequenceClassifier, build_module, count_parameters

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
