"""Generation from the byte-level LM: FutureFill equals naive recomputation (bytes and logits)
at every budget, budget switching equals the per-position budget forward, the cache follows
k, limits are refused, sampling, the `esssm generate` command, and the Transformer KV cache
the benchmark compares against."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from baselines import Transformer
from benchmarks.bench_generate import transformer_generate, transformer_logits
from datamodules import ByteLMDataModule
from esssm.infer.generate import (
    FutureFillMixer,
    budget_forward,
    generate,
    parse_schedule,
    sample_next,
    scheduled_logits,
)
from esssm.lab.cli import main
from esssm.lab.loading import load_language_model
from esssm.layer import ESSSMLayer
from esssm.model import ESSSM, LanguageModel
from esssm.train.lit import SequenceModule

SEQ_LEN, K_MAX = 96, 6
TEXT = "the quick brown fox jumps over the lazy dog. " * 40


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny byte LM (2 layers, d=32, k_max=6, seq_len=96) trained ~200 steps under budget
    dropout, with EMA: its checkpoint and its evaluation (EMA) model."""
    root = tmp_path_factory.mktemp("generate")
    folder = root / "books"
    folder.mkdir()
    for i in range(24):
        (folder / f"book{i}.txt").write_text(f"book {i}: " + TEXT)
    L.seed_everything(0)
    data = ByteLMDataModule(data_dir=str(folder), seq_len=SEQ_LEN, batch_size=8, val_fraction=0.2,
                            test_fraction=0.2)
    backbone = ESSSM(d_model=32, n_layers=2, seq_len=SEQ_LEN, k_max=K_MAX, dropout=0.0, drop_path=0.0)
    task = SequenceModule(backbone, num_classes=257, vocab_size=257, objective="lm", lr=5e-3, ema_decay=0.9,
                        budget={"warmup_epochs": 0, "grid": None, "k_min": 1})
    trainer = L.Trainer(
        default_root_dir=root, accelerator="cpu", devices=1, max_epochs=5, logger=False,
        limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[ModelCheckpoint(dirpath=root / "ckpts", save_last=True)],
    )
    trainer.fit(task, data)
    ckpt = root / "ckpts" / "last.ckpt"
    return {"ckpt": ckpt, "model": load_language_model(ckpt), "root": root}


@pytest.mark.parametrize("budget", range(1, K_MAX + 1))
def test_futurefill_greedy_equals_naive_at_every_budget(trained, budget):
    model = trained["model"]
    for prompt in (b"", b"t", b"book 3: the quick brown fox jumps over the lazy dog. the quick bro"):
        new = SEQ_LEN - max(len(prompt), 1)  # up to the full context
        fast = generate(model, prompt, new, budget=budget)
        slow = generate(model, prompt, new, budget=budget, method="naive")
        assert torch.equal(fast.ids, slow.ids), (budget, prompt)
        scale = slow.logits.abs().max()
        assert (fast.logits - slow.logits).abs().max() <= 1e-5 * scale, (budget, prompt)
    # The model learned the text, so the comparison is made on meaningful, confident logits.
    assert b"the lazy dog" in generate(model, b"the quick brown fox", 40, budget=K_MAX).text()


def test_budget_switching_equals_the_per_position_budget_forward(trained):
    """Every byte at its own budget, rising and falling, including inside the prompt: the
    logits that chose each byte are those of the per-position budget forward (each layer at
    position t uses k(t) channels) of the final text, and naive recomputation agrees."""
    model = trained["model"]
    schedule = parse_schedule("5,2@12,6@30,1@50,4@51,3@70", K_MAX)
    prompt = b"the quick brown fox jumps"
    fast = generate(model, prompt, SEQ_LEN - len(prompt), budget=schedule)
    slow = generate(model, prompt, SEQ_LEN - len(prompt), budget=schedule, method="naive")
    assert torch.equal(fast.ids, slow.ids)
    reference = scheduled_logits(model, fast.ids[:, :-1], schedule)[:, len(prompt) - 1 :]
    assert (fast.logits - reference).abs().max() <= 1e-5 * reference.abs().max()
    # The per-position semantics matter: from position 70 on the budget is 3, but the history
    # below was computed at other budgets, so a plain forward at k=3 differs.
    constant = model(fast.ids[:, :-1], budget=3)[:, 70:]
    assert (constant - reference[:, 70 - (len(prompt) - 1) :]).abs().max() > 1e-3


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_futurefill_mixer_equals_the_layer_with_per_position_budgets(dtype, tol):
    """The incremental layer alone, batch 2, a 37-position prompt then one position at a time
    over blocks of every size, budgets drawn per position: equal to the layer's own forward."""
    torch.manual_seed(0)
    layer = ESSSMLayer(8, 200, k_max=5).to(dtype)
    torch.nn.init.normal_(layer.mix, std=0.3)
    u = torch.randn(2, 200, 8, dtype=dtype)
    budgets = torch.randint(1, 6, (200,)).tolist()
    with torch.no_grad():
        expected = budget_forward(layer, u, budgets)
        mixer = FutureFillMixer(layer, batch=2, horizon=200, dtype=dtype)
        mixer.budgets = budgets[:37]
        outs = [mixer(u[:, :37])]
        for t in range(37, 200):
            mixer.budgets = [budgets[t]]
            outs.append(mixer(u[:, t : t + 1]))
    got = torch.cat(outs, dim=1)
    assert (got - expected).abs().max() <= tol * expected.abs().max()


def test_cache_follows_the_budget_and_grows_with_generated_bytes_only(trained):
    model = trained["model"]
    prompt = b"book 1: the quick brown fox jumps over the lazy dog."
    sizes = {k: generate(model, prompt, 20, budget=k).cache_bytes for k in (1, 2, 4)}
    per_channel = sizes[2] - sizes[1]
    assert per_channel > 0 and sizes[4] - sizes[2] == 2 * per_channel
    # Per channel: 2 layers x D=32 x the 19 positions fed after the prompt (the last new byte
    # is never fed back; the prompt's positions are not cached), float32.
    assert per_channel == 2 * 32 * 19 * 4


def test_generation_beyond_seq_len_is_refused_with_the_fix(trained):
    model = trained["model"]
    with pytest.raises(ValueError, match=r"exceeds the model's seq_len=96.*at most 86 new bytes"):
        generate(model, b"0123456789", 87)
    with pytest.raises(ValueError, match=r"budget must be an int in \[1, 6\]"):
        generate(model, b"a", 3, budget=7)
    with pytest.raises(ValueError, match="budgeted generation needs an ES-SSM backbone"):
        generate(LanguageModel(Transformer(16, 1, n_heads=2, max_len=8, causal=True), 257), b"a", 1)


def test_schedule_parsing_and_errors():
    schedule = parse_schedule("32,4@600,16@900", 32)
    assert [schedule(t) for t in (0, 599, 600, 899, 900, 5000)] == [32, 32, 4, 4, 16, 16]
    for bad in ("4@3", "4,2@0", "4,x", "33", "4,2@9,3@5"):
        with pytest.raises(ValueError):
            parse_schedule(bad, 32)


def test_sampling_uses_torch_draws_and_never_the_padding_id():
    torch.manual_seed(0)
    logits = torch.randn(4, 257)
    logits[:, 0] = 100.0  # padding is never chosen, however likely
    assert (sample_next(logits) != 0).all()
    assert torch.equal(sample_next(logits, 1.0, top_k=1), sample_next(logits))
    draw = [sample_next(logits, 0.8, 5, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(draw[0], draw[1])
    top5 = torch.topk(logits[:, 1:], 5).indices + 1
    assert all(d in row for d, row in zip(draw[2], top5))


def test_sampled_generation_is_reproducible_and_agrees_across_methods(trained):
    model = trained["model"]
    runs = [generate(model, b"the ", 40, temperature=1.0, top_k=20, seed=s, method=m)
            for s, m in ((3, "futurefill"), (3, "naive"), (4, "futurefill"))]
    assert torch.equal(runs[0].ids, runs[1].ids)
    assert not torch.equal(runs[0].ids, runs[2].ids)


def test_generate_command_on_checkpoint_and_export(trained, tmp_path, capsys):
    ckpt = str(trained["ckpt"])
    expected = generate(trained["model"], b"the quick", 30, budget=3).text()
    assert main(["generate", "--ckpt", ckpt, "--budget", "3", "--prompt", "the quick",
                 "--max-new-bytes", "30"]) == 0
    assert capsys.readouterr().out == expected.decode() + "\n"
    export = tmp_path / "lm_k3.pt"
    assert main(["export", "--ckpt", ckpt, "--budget", "3", "--out", str(export)]) == 0
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_bytes(b"the quick")
    out = tmp_path / "sample.txt"
    assert main(["generate", "--ckpt", str(export), "--prompt-file", str(prompt_file),
                 "--max-new-bytes", "30", "--method", "naive", "--out", str(out)]) == 0
    assert out.read_bytes() == expected  # the export's full budget is k=3 of the checkpoint
    with pytest.raises(SystemExit):  # an existing --out is never replaced without --overwrite
        main(["generate", "--ckpt", ckpt, "--max-new-bytes", "5", "--out", str(out)])
    assert out.read_bytes() == expected
    capsys.readouterr()
    assert main(["generate", "--ckpt", ckpt, "--budget-schedule", "6,2@10", "--prompt", "the",
                 "--max-new-bytes", "20", "--temperature", "0.7", "--top-k", "10", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("the")
    with pytest.raises(ValueError, match="seq_len"):
        main(["generate", "--ckpt", ckpt, "--max-new-bytes", "200"])


@pytest.mark.parametrize("option, value", [("--max-new-bytes", "0"), ("--budget", "2.5"),
                                           ("--temperature", "-1"), ("--temperature", "nan"), ("--top-k", "0")])
def test_generate_command_refuses_bad_numbers_before_loading(option, value, capsys):
    arguments = {"--max-new-bytes": "5", option: value}
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--ckpt", "no/such/file.ckpt", *[x for pair in arguments.items() for x in pair]])
    assert exit_.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_transformer_kv_cache_equals_the_full_causal_forward():
    torch.manual_seed(0)
    model = LanguageModel(Transformer(32, 2, n_heads=4, max_len=40, causal=True, dropout=0.0), 257).eval()
    prompt = torch.randint(1, 257, (1, 7))
    ids, cache_bytes = transformer_generate(model, prompt, 30)
    with torch.no_grad():
        full = model(ids[:, :-1])
        expected = full[..., 1:].argmax(-1)[:, 6:] + 1  # id 0 (padding) is never generated
        stepwise = transformer_logits(model, ids[:, :-1], 0)
    assert torch.equal(ids[:, 7:], expected)
    assert (stepwise - full).abs().max() < 1e-5
    assert cache_bytes == 2 * 2 * 37 * 32 * 4  # keys and values, 2 layers, 37 positions, D=32
