"""Objectives: the one place that knows what a head predicts and how it is scored."""

import ast
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from esssm.model import ESSSM, LanguageModel, RetrievalClassifier, SequenceClassifier
from esssm.objectives import OBJECTIVES, get_objective
from test_lit import make_task

ROOT = Path(__file__).resolve().parents[1]


def test_an_unknown_objective_is_an_error_naming_the_setting():
    with pytest.raises(ValueError, match=r"objective must be one of \('classification', 'retrieval', 'lm'\), got 'seq2seq'"):
        get_objective("seq2seq")
    with pytest.raises(ValueError, match="objective must be one of"):
        make_task(objective="task")


@pytest.mark.parametrize("name, model_cls, inputs", [
    ("classification", SequenceClassifier, ("x", "mask")),
    ("retrieval", RetrievalClassifier, ("x1", "mask1", "x2", "mask2")),
    ("lm", LanguageModel, ("x", "mask")),
])
def test_each_objective_builds_its_model_and_names_its_inputs(name, model_cls, inputs):
    backbone = ESSSM(d_model=8, n_layers=1, seq_len=12, k_max=4)
    model = get_objective(name).build(backbone, num_classes=3, vocab_size=11, input_dim=None)
    assert type(model) is model_cls and get_objective(name).inputs == inputs
    if name == "lm":
        assert model.head.out_features == 11  # its classes are the vocabulary


def test_per_token_stats_count_every_target_once_and_skip_pad():
    torch.manual_seed(0)
    logits, y = torch.randn(2, 5, 7), torch.tensor([[3, 1, 4, 0, 0], [2, 2, 6, 5, 1]])
    correct, loss, count = get_objective("lm").example_stats(logits, y)
    assert count.tolist() == [3, 5]
    valid = y != 0
    assert correct.tolist() == ((logits.argmax(-1) == y) & valid).sum(1).tolist()
    expected = F.cross_entropy(logits[valid], y[valid], reduction="sum")
    assert float(loss.sum()) == pytest.approx(float(expected), rel=1e-6)
    assert get_objective("lm").extra_metrics(math.log(2)) == {"bpb": pytest.approx(1.0)}
    assert get_objective("classification").extra_metrics(1.0) == {}


def test_one_label_stats_are_per_example():
    logits, y = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]), torch.tensor([0, 1, 1])
    correct, loss, count = get_objective("classification").example_stats(logits, y)
    assert correct.tolist() == [True, True, False] and count.tolist() == [1.0, 1.0, 1.0]
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, reduction="none"))


def test_no_code_outside_the_objectives_compares_against_an_objective_name():
    """The LM-specific behaviour sits behind `Objective`, not behind `== "lm"` in several files."""
    names = set(OBJECTIVES)
    offenders = []
    for path in [*ROOT.glob("esssm/**/*.py"), *ROOT.glob("baselines/*.py"), *ROOT.glob("datamodules/*.py")]:
        if path.name in ("objectives.py", "migrations.py"):  # migrations read old files as they were
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                constants = [c.value for c in [node.left, *node.comparators] if isinstance(c, ast.Constant)]
                if names & {c for c in constants if isinstance(c, str)}:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
