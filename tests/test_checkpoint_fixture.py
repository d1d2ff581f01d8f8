"""Checkpoints written by an earlier version of the code still load and compute the same numbers.

tests/fixtures/ holds two tiny checkpoints trained for 3 steps through `esssm fit` (how: see
tests/fixtures/README.md): an elastic ES-SSM on generated ListOps (trained under budget dropout)
and a fixed-budget byte-level LM. `expected.json` holds their outputs at two budgets, recorded
with the code that wrote them. Rerecord (only after a deliberate change of the maths) with
`python tests/test_checkpoint_fixture.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules import ListOpsDataModule
from esssm.lab.loading import load_module
from esssm.lab.sweep import run_sweep

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = FIXTURES / "expected.json"
BUDGETS = (2, 8)


def listops_numbers() -> dict:
    """Test-split accuracy and loss per budget (the sweep path) and the first batch's logits."""
    task = load_module(FIXTURES / "listops_esssm.ckpt")
    data = ListOpsDataModule(max_len=64, data_dir=str(FIXTURES / "listops_tiny"), batch_size=16)
    rows = run_sweep(task, data, list(BUDGETS), split="test", accelerator="cpu")
    batch = next(iter(data.test_dataloader()))
    with torch.no_grad():
        logits = {k: task.evaluate(batch, k)[:4].tolist() for k in BUDGETS}
    sweep = {str(r["budget"]): {"acc": r["acc"], "loss": r["loss"]} for r in rows}
    return {"sweep": sweep, "logits": {str(k): v for k, v in logits.items()}}


def lm_tokens() -> torch.Tensor:
    """A fixed (2, 32) byte batch (token = byte + 1)."""
    return torch.randint(1, 257, (2, 32), generator=torch.Generator().manual_seed(0))


def lm_numbers() -> dict:
    """Logits of every 8th position and the first 16 bytes per budget of the byte-level LM."""
    task = load_module(FIXTURES / "lm_fixed.ckpt")
    batch = {"x": lm_tokens()}
    with torch.no_grad():
        return {str(k): task.evaluate(batch, k)[:, ::8, :16].tolist() for k in BUDGETS}


def record() -> dict:
    return {"listops": listops_numbers(), "lm": lm_numbers()}


@pytest.fixture(scope="module")
def expected() -> dict:
    return json.loads(EXPECTED.read_text())


def close(got, want) -> None:
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)


def test_flat_budget_hyperparameters_become_the_budget_setting():
    elastic = load_module(FIXTURES / "listops_esssm.ckpt").hparams.budget
    assert elastic == {"grid": [1, 2, 4, 8], "k_min": 1, "warmup_epochs": 0, "warmup_steps": None,
                       "full_every": 8, "bias": 0.6, "seed": 0}
    assert load_module(FIXTURES / "listops_esssm.ckpt").sampler.grid == [1, 2, 4, 8]
    assert load_module(FIXTURES / "lm_fixed.ckpt").hparams.budget is None


def test_listops_checkpoint_loads_and_sweeps_as_before(expected):
    got, want = listops_numbers(), expected["listops"]
    assert got["sweep"].keys() == want["sweep"].keys()
    for k, row in want["sweep"].items():
        assert got["sweep"][k]["acc"] == row["acc"]
        close(got["sweep"][k]["loss"], row["loss"])
    for k, logits in want["logits"].items():
        close(got["logits"][k], logits)


def test_fixed_budget_lm_checkpoint_loads_as_before(expected):
    got = lm_numbers()
    assert got.keys() == expected["lm"].keys()
    for k, logits in expected["lm"].items():
        close(got[k], logits)


if __name__ == "__main__":
    EXPECTED.write_text(json.dumps(record(), indent=1) + "\n")
    print(f"wrote {EXPECTED}")
