"""Budgeted deployment on a tiny trained model: export, plan, cascade, and their commands."""

import shutil
import subprocess
import sys
import textwrap

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from esssm import infer
from esssm.infer import CurvePoint
from esssm.lab.cli import main
from esssm.lab.loading import load_module
from esssm.model import ESSSM, active_parameters, count_parameters, module_spec
from esssm.train.callbacks import BudgetSweep
from esssm.train.lit import SequenceModule
import esssm.layer
from toy_data import ToyDataModule, collate

BUDGETS = [1, 2, 4, 8]


# Tiny tensors: a second OpenMP thread only spins against other work on shared cores
# (measured: this file 43-69 s with 2 threads under load, 10 s with one).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny ES-SSM (k_max=8) trained for 3 epochs with EMA, its checkpoint and budget curve."""
    root = tmp_path_factory.mktemp("deploy")
    L.seed_everything(0)
    backbone = ESSSM(d_model=32, n_layers=2, seq_len=24, k_max=8, dropout=0.0, drop_path=0.0)
    module = SequenceModule(
        backbone, num_classes=3, vocab_size=8, lr=3e-3, ema_decay=0.9, budget={"warmup_epochs": 0}
    )
    trainer = L.Trainer(
        default_root_dir=root, accelerator="cpu", devices=1, max_epochs=3, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[BudgetSweep(BUDGETS), ModelCheckpoint(dirpath=root / "ckpts", save_last=True)],
    )
    trainer.fit(module, ToyDataModule())
    ckpt = root / "ckpts" / "last.ckpt"
    module = load_module(ckpt).eval()
    return {"ckpt": ckpt, "module": module, "config": infer.model_config(module.hparams), "root": root}


@pytest.fixture(scope="module")
def batch():
    """20 validation examples of varying length (right-padded, masked)."""
    data = ToyDataModule(val_size=20)
    data.setup()
    return collate([data.val[i] for i in range(20)])


def test_export_equals_full_model_at_budget_and_is_smaller(trained, batch, tmp_path):
    module, config = trained["module"], trained["config"]
    full = module.eval_model
    assert full is module.ema.module  # export uses the EMA weights the curve was measured with
    sizes = []
    for k in (1, 3, 8):
        small, small_config = infer.truncate(full, config, k)
        path = tmp_path / f"k{k}.pt"
        sizes.append(infer.save_exported(small, small_config, path))
        loaded = infer.load_exported(path)
        assert loaded.k_max == k and loaded.export_config["exported"] == {"budget": k, "from_k_max": 8}
        with torch.no_grad():
            expected = module.evaluate(batch, k)
            assert torch.allclose(infer.batch_logits(loaded, batch), expected, atol=1e-6, rtol=0)
        assert count_parameters(loaded) == active_parameters(full, k)
        layer = loaded.backbone.blocks[0].mixer
        assert layer.mix.shape[0] == layer.gate_out.out_features == layer.sigma.shape[0] == k
        assert torch.equal(layer.phi, full.backbone.blocks[0].mixer.phi[:, :k])  # stored, not recomputed
    assert sizes[0] < sizes[1] < sizes[2] <= infer.state_bytes(full) + 4096  # + the config, a few KiB


def test_loading_an_export_computes_no_filters_and_needs_no_lightning(trained, tmp_path, monkeypatch):
    path = tmp_path / "k2.pt"
    infer.save_exported(*infer.truncate(trained["module"].eval_model, trained["config"], 2), path)

    def forbidden(*args, **kwargs):
        raise AssertionError("an exported model must not recompute its filters")

    monkeypatch.setattr(esssm.layer, "spectral_filters", forbidden)
    assert infer.load_exported(path).k_max == 2
    script = f"""
        import sys
        sys.modules["lightning"] = sys.modules["pytorch_lightning"] = None  # any import fails
        import torch
        from esssm.infer import load_exported
        model = load_exported({str(path)!r})
        print(tuple(model(torch.randint(8, (2, 24))).shape))
        assert not any(m.startswith("lightning") for m in sys.modules if sys.modules[m] is not None)
    """
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "(2, 3)"


def test_retrieval_with_continuous_inputs_exports_and_cascades(tmp_path):
    torch.manual_seed(0)
    backbone = ESSSM(d_model=16, n_layers=1, seq_len=20, k_max=6, dropout=0.0, drop_path=0.0)
    config = {"backbone": module_spec(backbone), "num_classes": 2, "vocab_size": None,
              "input_dim": 3, "objective": "retrieval"}
    model = infer.build_model(config).eval()
    batch = infer.synthetic_batch(config, 4, 20)
    assert batch["x1"].shape == (4, 20, 3) and set(batch) == {"x1", "mask1", "x2", "mask2"}
    infer.save_exported(*infer.truncate(model, config, 3), tmp_path / "r.pt")
    with torch.no_grad():
        expected = infer.batch_logits(model, batch, 3)
        loaded = infer.load_exported(tmp_path / "r.pt")
        assert torch.allclose(infer.batch_logits(loaded, batch), expected, atol=1e-6)
        low, high = (infer.cascade_predict(model, batch, [1, 3], t) for t in (0.0, 2.0))
        assert torch.equal(low.logits, infer.batch_logits(model, batch, 1))
        assert torch.allclose(high.logits, expected, atol=1e-6)


def test_load_exported_rejects_a_training_checkpoint(trained):
    with pytest.raises(ValueError, match="not an `esssm export` file"):
        infer.load_exported(trained["ckpt"])


def test_torchscript_agrees(trained, batch, tmp_path):
    small, _ = infer.truncate(trained["module"].eval_model, trained["config"], 4)
    path = tmp_path / "k4.torchscript.pt"
    assert infer.export_torchscript(small, batch, path) == path.stat().st_size
    with torch.no_grad():
        traced = infer.load_torchscript(path)(batch["x"], batch["mask"])
        assert torch.allclose(traced, trained["module"].evaluate(batch, 4), atol=1e-5, rtol=0)


def test_non_elastic_model_is_refused():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="elastic ES-SSM backbone"):
        infer.elastic_k_max(model)


CURVE = [CurvePoint(1, 0.5, 100), CurvePoint(2, 0.8, 200), CurvePoint(4, 0.9, 300), CurvePoint(8, 0.9, 400)]
LATENCY = {1: 1.0, 2: 2.0, 4: 4.0, 8: 8.0}


@pytest.mark.parametrize("target, expected", [(5.0, 4), (100.0, 4), (3.0, 2), (1.0, 1), (0.5, None)])
def test_plan_picks_the_most_accurate_budget_meeting_the_target(target, expected):
    best, rows = infer.plan_budget(CURVE, LATENCY, target)
    assert (best.budget if best else None) == expected  # accuracy ties go to the faster budget
    assert [r.meets for r in rows] == [LATENCY[p.budget] <= target for p in CURVE]
    text = infer.format_plan(rows, best, target)
    assert ("no budget meets" in text) == (expected is None)


def test_measure_latencies_interleaves_rounds_and_takes_medians(trained):
    model, config = trained["module"].eval_model, trained["config"]
    seen, fake = [], iter([99, 99, 5, 50, 1, 10, 3, 30])  # warm-up round, then 3 rounds of (k=1, k=4)

    def fake_timer(fn, device):
        seen.append(tuple(fn().shape))
        return next(fake)

    example = infer.synthetic_batch(config, 3, 24)
    latencies = infer.measure_latencies(model, example, [1, 4], rounds=3, warmup=1, timer=fake_timer)
    assert latencies == {1: 3, 4: 30} and seen == [(3, 3)] * 8


def test_curve_beside_the_checkpoint(trained):
    path = infer.curve_for(trained["ckpt"], trained["module"].source)
    assert path.name == "budget_curve_val.csv"
    curve = infer.read_curve(path)
    assert [p.budget for p in curve] == BUDGETS
    assert [p.active_params for p in curve] == [active_parameters(trained["module"].eval_model, k) for k in BUDGETS]


CURVE_HEADER = "checkpoint,sha256,epoch,step,budget,acc,loss,count,active_params\n"


def curve_row(budget="2", acc="0.5", active_params="100") -> str:
    return f"last.ckpt,ab12,1,8,{budget},{acc},0.7,10,{active_params}\n"


@pytest.mark.parametrize(
    ("content", "error", "problem"),
    [
        (b"", ValueError, "is empty"),
        (CURVE_HEADER.encode(), ValueError, "has a header but no rows"),
        (b"budget,active_params\n2,100\n", ValueError, ":1: not a budget curve: the header lacks acc"),
        ((CURVE_HEADER + curve_row() + "garbage\n").encode(), ValueError, ":3: fewer fields than the header's 9"),
        ((CURVE_HEADER + curve_row() + "a,b,c,d,e,f,g,h,i,j\n").encode(), ValueError, ":3: more fields"),
        ((CURVE_HEADER + curve_row(budget="two")).encode(), ValueError, ":2: budget 'two' is not a whole number >= 1"),
        ((CURVE_HEADER + curve_row(budget="²")).encode(), ValueError, ":2: budget '²' is not a whole number"),
        ((CURVE_HEADER + curve_row(budget="-3")).encode(), ValueError, ":2: budget '-3' is not a whole number"),
        ((CURVE_HEADER + curve_row(acc="high")).encode(), ValueError, ":2: accuracy 'high' at budget 2"),
        ((CURVE_HEADER + curve_row(acc="nan")).encode(), ValueError, ":2: accuracy 'nan' at budget 2 is not a number"),
        ((CURVE_HEADER + curve_row(acc="inf")).encode(), ValueError, ":2: accuracy 'inf'"),
        ((CURVE_HEADER + curve_row(active_params="")).encode(), ValueError, ":2: active_params '' is not"),
        (CURVE_HEADER.encode() + b"\xff\xfe\x00garbage", ValueError, "is not a budget curve: byte 65 is not UTF-8"),
        (None, IsADirectoryError, "cannot read the budget curve"),
        ("missing", FileNotFoundError, "cannot read the budget curve"),
    ],
    ids=["empty", "header-only", "no-acc-column", "garbage-row", "extra-fields", "word-budget", "superscript-budget",
         "negative-budget", "word-acc", "nan-acc", "inf-acc", "empty-active-params", "not-utf8", "folder", "missing"],
)  # fmt: skip
def test_malformed_curves_are_refused_naming_the_file(tmp_path, content, error, problem):
    path = tmp_path / "curve.csv"
    if content is None:
        path.mkdir()
    elif content != "missing":
        path.write_bytes(content)
    with pytest.raises(error, match=problem) as caught:
        infer.read_curve(path)
    assert str(path) in str(caught.value)


def test_read_curve_skips_full_rows_and_blank_lines(tmp_path):
    path = tmp_path / "curve.csv"
    path.write_text(CURVE_HEADER + "\n" + curve_row("4", "0.75", "300") + curve_row("full", "0.8", "400") + curve_row())
    assert infer.read_curve(path) == [CurvePoint(2, 0.5, 100), CurvePoint(4, 0.75, 300)]


def test_plan_names_a_curve_it_cannot_read(trained, tmp_path):
    for curve, error in ((tmp_path / "missing.csv", FileNotFoundError), (tmp_path, IsADirectoryError)):
        with pytest.raises(error, match=f"cannot read the budget curve {curve}"):
            main(["plan", "--ckpt", str(trained["ckpt"]), "--latency-ms", "1", "--curve", str(curve)])


def test_cascade_extremes_and_compute_accounting(trained, batch):
    model, budgets = trained["module"].eval_model, [2, 4, 8]
    params = {k: active_parameters(model, k) for k in budgets}
    with torch.no_grad():
        low = infer.cascade_predict(model, batch, budgets, 0.0)
        assert (low.budget == 2).all() and (low.channels == 2).all() and (low.params == params[2]).all()
        assert torch.equal(low.logits, infer.batch_logits(model, batch, 2))
        high = infer.cascade_predict(model, batch, budgets, 1.01)
        assert (high.budget == 8).all() and (high.channels == 14).all()
        assert (high.params == sum(params.values())).all()
        assert torch.allclose(high.logits, infer.batch_logits(model, batch, 8), atol=1e-6, rtol=0)
        conf = {k: infer.batch_logits(model, batch, k).softmax(-1).amax(-1) for k in budgets}
        threshold = float(conf[2].median())
        mid = infer.cascade_predict(model, batch, budgets, threshold)
    assert 0 < (mid.budget == 2).sum() < len(mid.budget)
    for i, k in enumerate(mid.budget.tolist()):
        visited = [b for b in budgets if b <= k]
        assert mid.channels[i] == sum(visited) and mid.params[i] == sum(params[b] for b in visited)
        assert all(conf[b][i] < threshold + 1e-6 for b in visited[:-1])
        assert k == 8 or conf[k][i] >= threshold - 1e-6


def test_cascade_sweep_rows_next_to_the_fixed_budget_curve(trained):
    data = ToyDataModule(val_size=30, eval_batch_size=8)
    data.setup()
    model = trained["module"].eval_model
    rows = infer.cascade_sweep(model, data.val_dataloader, [2, 8], [0.0, 2.0])
    assert [r["policy"] for r in rows] == ["k=2", "k=8", "cascade 2,8 @ 0", "cascade 2,8 @ 2"]
    fixed2, fixed8, low, high = rows
    assert fixed2["avg_channels"] == 2 and fixed8["avg_channels"] == 8 and high["avg_channels"] == 10
    assert low["acc"] == fixed2["acc"] and high["acc"] == fixed8["acc"]
    assert high["avg_params"] == active_parameters(model, 2) + active_parameters(model, 8)
    assert low["answered"] == {2: 1.0} and all(r["count"] == 30 and r["ms_per_example"] > 0 for r in rows)
    assert "avg channels" in infer.format_cascade(rows)


def test_commands_export_plan_cascade(trained, tmp_path, capsys):
    ckpt, out = str(trained["ckpt"]), tmp_path / "model_k4.pt"
    assert main(["export", "--ckpt", ckpt, "--budget", "4", "--out", str(out), "--torchscript"]) == 0
    text = capsys.readouterr().out
    small = active_parameters(trained["module"].eval_model, 4)
    assert f"-> {small:,d}" in text and "max |logits" in text and "torchscript" in text
    assert out.is_file() and out.with_suffix(".torchscript.pt").is_file()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries
    (tmp_path / "plain").write_text("")
    assert out.stat().st_mode == (tmp_path / "plain").stat().st_mode  # umask mode, not mkstemp's 0600

    fast = ["plan", "--ckpt", ckpt, "--repeats", "1", "--warmup", "0"]
    assert main([*fast, "--latency-ms", "1e9"]) == 0
    text = capsys.readouterr().out
    best = max(p.acc for p in infer.read_curve(infer.curve_for(ckpt, trained["module"].source)))
    assert "best budget: k=" in text and f"({100 * best:.2f}%" in text
    assert main([*fast, "--latency-ms", "1e-9"]) == 1
    assert "no budget meets" in capsys.readouterr().out
    lonely = tmp_path / "no_curve_here" / "last.ckpt"
    lonely.parent.mkdir()
    shutil.copy(ckpt, lonely)
    with pytest.raises(FileNotFoundError, match="esssm sweep"):
        main(["plan", "--ckpt", str(lonely), "--latency-ms", "1"])

    config = tmp_path / "data.yaml"
    config.write_text("data:\n  class_path: toy_data.ToyDataModule\n  init_args: {val_size: 12}\n")
    args = ["cascade", "--ckpt", ckpt, "--data-config", str(config), "--budgets", "2,32", "--thresholds", "0.9"]
    with pytest.raises(ValueError, match=r"--budgets: budgets \[32\] are outside 1..k_max=8"):
        main(args)  # refused, never capped
    args[args.index("2,32")] = "2,8"
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "k=2" in text and "k=8" in text and "cascade 2,8 @ 0.9" in text and "12 examples" in text


def test_language_model_exports_with_tied_head(tmp_path):
    torch.manual_seed(0)
    backbone = ESSSM(d_model=16, n_layers=1, seq_len=32, k_max=6, dropout=0.0)
    module = SequenceModule(backbone, num_classes=257, vocab_size=257, objective="lm", ema_decay=None).eval()
    config = infer.model_config(module.hparams)
    x = torch.randint(1, 257, (2, 32))
    small, small_config = infer.truncate(module.eval_model, config, 2)
    infer.save_exported(small, small_config, tmp_path / "lm.pt")
    loaded = infer.load_exported(tmp_path / "lm.pt")
    assert loaded.head.weight is loaded.encoder.proj.weight
    with torch.no_grad():
        assert torch.allclose(loaded(x), module.evaluate({"x": x}, 2), atol=1e-6, rtol=0)
