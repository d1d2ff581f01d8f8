"""AOTInductor packages (.pt2) of truncated models equal the PyTorch model; damaged or
disagreeing packages are refused. Each package is a C++ compilation (10-40 s on a loaded
2-core CPU), so the default run compiles two (25-55 s in all); the other tasks and budgets
are marked slow (about 5 minutes)."""

import shutil

import pytest
import torch

from esssm import infer
from esssm.batch import model_inputs
from esssm.files import ChecksumError, file_sha256, sidecar_path
from esssm.infer import pt2
from esssm.lab.cli import main
from test_deploy import trained  # noqa: F401  (the tiny trained checkpoint and its budget curve)

pytestmark = pytest.mark.usefixtures("one_thread")

D, L, K = 16, 32, 4


def tiny_model(objective: str) -> tuple[torch.nn.Module, dict]:
    """A one-layer ES-SSM model of `objective` (d=16, seq_len=32, k_max=4) and its config."""
    backbone = {
        "class_path": "esssm.model.ESSSM",
        "init_args": {"d_model": D, "n_layers": 1, "seq_len": L, "k_max": K, "dropout": 0.0, "drop_path": 0.0},
    }
    config = {"objective": objective, "num_classes": 3, "vocab_size": 11, "input_dim": None, "backbone": backbone}
    torch.manual_seed(0)
    model = infer.build_model(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # lift the mixing matrices off their 1e-3 init: a visible spectral path
            p.add_(0.05 * torch.randn_like(p))
    return model, config


def padded_batch(config: dict, size: int, length: int) -> dict:
    """A synthetic batch whose first row is padded after length // 2 (masked)."""
    batch = infer.synthetic_batch(config, size, length)
    for key in ("mask", "mask1", "mask2"):
        if key in batch:
            batch[key][0, max(1, length // 2):] = False
    return batch


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert got.shape == expected.shape
    return float((got - expected).abs().max() / expected.abs().max())


def assert_package_equals(runner: pt2.Pt2Runner, full: torch.nn.Module, config: dict, budget: int) -> None:
    """The package equals `full` at `budget` at two batch sizes and two lengths (other than the
    example's), and on strided views x[:, :n] of a longer batch."""
    cases = [model_inputs(padded_batch(config, size, length)) for size in (2, 5) for length in (L, 9)]
    cases.append(tuple(t[:, : L // 2] for t in model_inputs(padded_batch(config, 3, L))))
    with torch.no_grad():
        for inputs in cases:
            assert relative_error(runner(*inputs), full(*inputs, budget=budget)) < 1e-5


def export_budget(objective: str, budget: int, path, check=None, batch: int = 3) -> tuple[torch.nn.Module, dict]:
    """Export the tiny model of `objective` truncated to `budget` to `path` from an example of
    `batch` x 32; returns (full model, config)."""
    full, config = tiny_model(objective)
    small, _ = infer.truncate(full, config, budget)
    pt2.export_pt2(small, infer.synthetic_batch(config, batch, L), path, check)
    return full, config


@pytest.fixture(scope="module")
def lm_package(tmp_path_factory):
    """The byte LM truncated to k=2, as a package (one compilation shared by the tests below),
    from an example of batch 1 (what `esssm plan` times by default)."""
    path = tmp_path_factory.mktemp("pt2") / "lm_k2.pt2"
    full, config = export_budget("lm", 2, path, batch=1)
    return {"path": path, "full": full, "config": config}


@pytest.mark.e2e
def test_lm_package_equals_the_model_at_any_batch_and_length(lm_package):
    runner = pt2.load_pt2(lm_package["path"])
    assert runner.facts["seq_len"] == L and [i["name"] for i in runner.facts["inputs"]] == ["x", "mask"]
    assert_package_equals(runner, lm_package["full"], lm_package["config"], budget=2)


def test_package_refuses_inputs_it_was_not_compiled_for(lm_package):
    """The compiled code would read past its buffers: the runner checks lengths, dtypes, counts."""
    runner = pt2.load_pt2(lm_package["path"])
    x, mask = model_inputs(infer.synthetic_batch(lm_package["config"], 2, L + 1))
    with pytest.raises(ValueError, match=r"input x must be .* 1 <= L <= 32, got dtype int64, shape \(2, 33\)"):
        runner(x, mask)
    with pytest.raises(ValueError, match="input x must be a tensor of dtype int64"):
        runner(x[:, :L].float(), mask[:, :L])
    with pytest.raises(ValueError, match=r"takes 2 inputs \(x, mask\), got 1"):
        runner(x[:, :L])


def test_tampered_package_is_refused(lm_package, tmp_path):
    path = tmp_path / "lm.pt2"
    shutil.copy(lm_package["path"], path)
    shutil.copy(sidecar_path(lm_package["path"]), sidecar_path(path))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=f"{path} fails its checksum"):
        pt2.load_pt2(path)


def test_failing_check_keeps_the_earlier_package(lm_package, tmp_path):
    """A classifier package checked against the full model at the wrong budget disagrees: the
    export is refused naming the file and the error, and the earlier file stays as it was."""
    path = tmp_path / "model.pt2"
    shutil.copy(lm_package["path"], path)
    shutil.copy(sidecar_path(lm_package["path"]), sidecar_path(path))
    before = file_sha256(path)
    full, config = tiny_model("classification")
    probes = pt2.probe_inputs(infer.synthetic_batch(config, 3, L))

    def against_budget_2(tmp: str) -> None:
        pt2.check_package(tmp, lambda *inputs: full(*inputs, budget=2), probes, path)

    with pytest.raises(RuntimeError, match=f"{path}: the AOTInductor package disagrees .* relative error"):
        export_budget("classification", 1, path, check=against_budget_2)
    assert file_sha256(path) == before and sidecar_path(path).read_text().split()[0] == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2", "model.pt2.sha256"]  # no temporary left


def test_export_refuses_a_bad_name_or_example_before_compiling(tmp_path):
    full, config = tiny_model("lm")
    example = infer.synthetic_batch(config, 3, L)
    with pytest.raises(ValueError, match=r"model.pt: an AOTInductor package is a .pt2 file"):
        pt2.export_pt2(full, example, tmp_path / "model.pt")
    with pytest.raises(ValueError, match="the example lacks mask"):
        pt2.export_pt2(full, {"x": example["x"]}, tmp_path / "model.pt2")
    with pytest.raises(ValueError, match=r"length in \[1, seq_len=32\], got 33"):
        pt2.export_pt2(full, infer.synthetic_batch(config, 3, L + 1), tmp_path / "model.pt2")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize("budget", [1, 2, K])
@pytest.mark.parametrize("objective", ["classification", "retrieval", "lm"])
def test_package_equals_the_model_at_every_budget(objective, budget, tmp_path):
    path = tmp_path / f"{objective}_k{budget}.pt2"
    full, config = export_budget(objective, budget, path)
    assert_package_equals(pt2.load_pt2(path), full, config, budget)


@pytest.mark.slow
def test_plan_runtime_pt2_times_every_budget():
    full, config = tiny_model("classification")
    calls = []

    def timer(fn, device):
        calls.append(fn())
        return float(len(calls))

    example = infer.synthetic_batch(config, 3, L)
    forwards = infer.budget_forwards("pt2", full, config, example, [1, K])
    latencies = infer.time_budgets(forwards, rounds=3, warmup=1, timer=timer)
    assert list(latencies) == [1, K] and len(calls) == 8  # (warmup + rounds) x budgets, interleaved
    assert latencies == {1: 5.0, K: 6.0}
    with torch.no_grad():
        assert relative_error(calls[-1], full(*model_inputs(example), budget=K)) < 1e-5


@pytest.mark.e2e
def test_cli_exports_a_checked_package_and_plans_with_it(trained, tmp_path, capsys):
    """`esssm export --format pt2` writes a package that equals the checkpoint's model at k, and
    `esssm plan --runtime pt2` times budgets through packages (one budget: one compilation)."""
    ckpt, out = str(trained["ckpt"]), tmp_path / "model_k4.pt2"
    with pytest.raises(SystemExit):  # torch's loader needs the suffix: refused before any work
        main(["export", "--ckpt", ckpt, "--budget", "4", "--format", "pt2", "--out", str(tmp_path / "m.bin")])
    assert main(["export", "--ckpt", ckpt, "--budget", "4", "--format", "pt2", "--out", str(out)]) == 0
    assert "relative error against the full model at k=4" in capsys.readouterr().out
    batch = infer.synthetic_batch(trained["config"], 2, 20)
    with torch.no_grad():
        assert relative_error(pt2.load_pt2(out)(*model_inputs(batch)), trained["module"].evaluate(batch, 4)) < 1e-5

    curve = tmp_path / "curve.csv"
    with open(infer.curve_for(ckpt, trained["module"].source), newline="") as f:
        curve.write_text("".join(f.readlines()[:2]))  # the header and budget 1
    args = ["plan", "--ckpt", ckpt, "--curve", str(curve), "--runtime", "pt2", "--repeats", "1", "--warmup", "0",
            "--latency-ms", "1e9"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "(pt2)" in text and "best budget: k=1" in text
