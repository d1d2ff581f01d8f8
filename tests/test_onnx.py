"""ONNX export: truncated models run in onnxruntime and equal PyTorch; checked files, CLI, plan."""

import csv

import numpy as np
import pytest
import torch

from esssm import infer
from esssm.checkpoints import CheckpointError
from esssm.files import ChecksumError, sidecar_path
from esssm.infer import onnx as deploy_onnx
from esssm.infer.dft import MatmulConvolution
from esssm.lab.cli import main
from esssm.model import ESSSM, module_spec
from esssm.spectral import causal_fft_conv, fast_fft_size, filter_spectra
from test_deploy import trained  # noqa: F401  (the tiny trained checkpoint and its budget curve)

pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.usefixtures("one_thread")

SEQ_LEN, K_MAX = 12, 3
OBJECTIVES = {  # objective: (num_classes, vocab_size, input_dim)
    "classification": (3, 8, None),
    "retrieval": (2, None, 3),
    "lm": (257, 257, None),
}


def tiny_model(objective: str) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(0)
    num_classes, vocab_size, input_dim = OBJECTIVES[objective]
    backbone = ESSSM(d_model=16, n_layers=1, seq_len=SEQ_LEN, k_max=K_MAX, dropout=0.0, drop_path=0.0)
    config = {"backbone": module_spec(backbone), "num_classes": num_classes, "vocab_size": vocab_size,
              "input_dim": input_dim, "objective": objective}
    return infer.build_model(config).eval(), config


def exported(model, config, budget, path):
    infer.export_onnx(*infer.truncate(model, config, budget), path)
    return infer.load_onnx(path, threads=1)


def relative_error(got: np.ndarray, expected: torch.Tensor) -> float:
    return float(np.abs(got - expected.numpy()).max() / expected.abs().max())


@pytest.mark.e2e
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_onnx_equals_pytorch_at_every_budget_batch_size_and_length(objective, tmp_path):
    model, config = tiny_model(objective)
    for budget in (1, 2, K_MAX):
        onnx_model = exported(model, config, budget, tmp_path / f"k{budget}.onnx")
        assert onnx_model.names == deploy_onnx.input_names(config)
        for batch_size in (1, 3):
            for length in (SEQ_LEN, 5):
                batch = infer.synthetic_batch(config, batch_size, length)
                if objective == "retrieval":  # documents of different lengths in one batch
                    batch.update({k: v for k, v in infer.synthetic_batch(config, batch_size, 7).items() if "2" in k})
                with torch.no_grad():
                    expected = infer.batch_logits(model, batch, budget)
                got = onnx_model(batch)
                assert got.shape == expected.shape
                assert relative_error(got, expected) < 1e-5, (budget, batch_size, length)


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    model, config = tiny_model("classification")
    path = tmp_path_factory.mktemp("onnx") / "k2.onnx"
    infer.export_onnx(*infer.truncate(model, config, 2), path)
    return path, config


def test_tampered_or_foreign_files_are_refused_naming_the_file(classifier_file, tmp_path):
    path, _ = classifier_file
    tampered = tmp_path / "tampered.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    sidecar_path(tampered).write_text(sidecar_path(path).read_text())
    with pytest.raises(ChecksumError, match="tampered.onnx fails its checksum"):
        infer.load_onnx(tampered)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="garbage.onnx is not a loadable ONNX model"):
        infer.load_onnx(garbage)
    with pytest.raises(FileNotFoundError, match="missing.onnx does not exist"):
        infer.load_onnx(tmp_path / "missing.onnx")


def test_inputs_longer_than_seq_len_or_missing_are_refused(classifier_file):
    path, config = classifier_file
    model = infer.load_onnx(path, threads=1)
    with pytest.raises(ValueError, match=f"length <= seq_len={SEQ_LEN}"):
        model(infer.synthetic_batch(config, 1, SEQ_LEN + 1))
    with pytest.raises(ValueError, match=r"lacks \['mask'\]"):
        model({"x": np.zeros((1, 4), dtype=np.int64)})


def test_cli_exports_onnx_with_a_sidecar_and_refuses_a_failing_check(trained, tmp_path, capsys, monkeypatch):
    ckpt, out = str(trained["ckpt"]), tmp_path / "model_k4.onnx"
    args = ["export", "--ckpt", ckpt, "--budget", "4", "--format", "onnx", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "relative error, onnxruntime vs PyTorch: k=4 B=1 L=13" in text and "k=4 B=2 L=24" in text
    assert out.is_file() and sidecar_path(out).is_file()
    batch = infer.synthetic_batch(trained["config"], 2, 24)
    with torch.no_grad():
        expected = trained["module"].evaluate(batch, 4)
    assert relative_error(infer.load_onnx(out, threads=1)(batch), expected) < 1e-5

    before = out.read_bytes()
    monkeypatch.setattr(deploy_onnx, "relative_error", lambda got, expected: 0.5)
    with pytest.raises(RuntimeError, match=r"ONNX export refused.*relative error 0.5 > 0.0001.*was not written"):
        main([*args, "--overwrite"])
    assert out.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(SystemExit):
        main([*args, "--torchscript"])
    with pytest.raises(SystemExit):
        main(["export", "--ckpt", ckpt, "--elastic", "--out", str(tmp_path / "e.pt")])  # ONNX only

    elastic = tmp_path / "model_all.onnx"
    monkeypatch.undo()
    assert main(["export", "--ckpt", ckpt, "--elastic", "--format", "onnx", "--out", str(elastic)]) == 0
    assert "exported every budget (input `budget`) of k_max=8" in capsys.readouterr().out
    assert relative_error(infer.load_onnx(elastic, threads=1)(batch, 4), expected) < 1e-5


def test_plan_times_budgets_in_onnxruntime(trained, tmp_path, capsys):
    ckpt = str(trained["ckpt"])
    with open(infer.curve_for(ckpt, trained["module"].source), newline="") as f:
        rows = list(csv.DictReader(f))[:2]  # budgets 1 and 2: two exports keep the test short
    curve = tmp_path / "curve.csv"
    with open(curve, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    args = ["plan", "--ckpt", ckpt, "--curve", str(curve), "--runtime", "onnxruntime", "--repeats", "1",
            "--warmup", "0", "--latency-ms", "1e9"]
    assert main(args) == 0
    captured = capsys.readouterr()
    text = captured.out
    assert "(onnxruntime)" in text and "best budget: k=" in text and text.count(" yes") == 2
    assert "preparing 2 budgets (onnxruntime): 2 budgets in " in captured.err  # the exports, with progress


def test_onnxruntime_runtime_refuses_a_gpu_and_unknown_runtimes(trained):
    model, config = trained["module"].eval_model, trained["config"]
    example = infer.synthetic_batch(config, 1, 24)
    with pytest.raises(ValueError, match="runs on the CPU"):
        infer.budget_forwards("onnxruntime", model, config, example, [1], "cuda")
    with pytest.raises(ValueError, match="runtime must be one of"):
        infer.budget_forwards("tvm", model, config, example, [1])


@pytest.mark.parametrize("seq_len", [1, 3, 20, 100])
def test_matmul_convolution_is_the_causal_fft_convolution_at_every_length(seq_len):
    torch.manual_seed(0)
    phi = torch.randn(seq_len, 5)
    conv = MatmulConvolution(phi, deploy_onnx.power_of_two_fft_size(seq_len))
    for length in sorted({seq_len, seq_len // 2 + 1}):
        u = torch.randn(2, length, 4)
        nfft = fast_fft_size(2 * length - 1)
        expected = causal_fft_conv(u, filter_spectra(phi[:length, :3], nfft), nfft)
        assert torch.allclose(conv(u, 3), expected, rtol=0, atol=1e-5 * float(expected.abs().max()))


def test_non_finite_weights_are_never_exported(tmp_path):
    model, config = tiny_model("classification")
    small, small_config = infer.truncate(model, config, 2)
    with torch.no_grad():
        small.head.bias[0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite weights"):
        infer.export_onnx(small, small_config, tmp_path / "nan.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_elastic_file_serves_every_budget_as_pytorch_does(objective, tmp_path):
    model, config = tiny_model(objective)
    path = tmp_path / "elastic.onnx"
    infer.export_onnx(model, config, path, elastic=True)
    onnx_model = infer.load_onnx(path, threads=1)
    assert onnx_model.elastic and onnx_model.names == deploy_onnx.input_names(config)
    for budget in (1, 2, K_MAX):
        for batch_size, length in ((1, SEQ_LEN), (3, 5)):
            batch = infer.synthetic_batch(config, batch_size, length)
            with torch.no_grad():
                expected = infer.batch_logits(model, batch, budget)
            assert relative_error(onnx_model(batch, budget), expected) < 1e-5, (budget, batch_size, length)
    with torch.no_grad():
        assert relative_error(onnx_model(batch), infer.batch_logits(model, batch)) < 1e-5  # None: k_max
    with pytest.raises(ValueError, match=rf"elastic.onnx: budget must be an int in \[1, {K_MAX}\]"):
        onnx_model(batch, K_MAX + 1)


def test_single_budget_file_refuses_a_budget(classifier_file):
    path, config = classifier_file
    with pytest.raises(ValueError, match="k2.onnx holds one budget .k=2.*--elastic"):
        infer.load_onnx(path, threads=1)(infer.synthetic_batch(config, 1, 4), 1)
