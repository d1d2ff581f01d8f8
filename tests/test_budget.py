"""Budget-dropout sampler: deterministic per (seed, step), the schedule, the bias toward large k."""

from collections import Counter

import pytest

from esssm.budget import PAPER_GRID, BudgetSampler


def test_same_draw_for_same_seed_and_step():
    a, b = BudgetSampler(32, seed=3), BudgetSampler(32, seed=3)
    draws = [a.sample(step, epoch=5) for step in range(200)]
    assert draws == [b.sample(step, epoch=5) for step in range(200)]
    assert draws != [BudgetSampler(32, seed=4).sample(s, epoch=5) for s in range(200)]
    assert a.sample(17, 5) == a.sample(17, 5)  # every rank / micro-batch of a step agrees


def test_warmup_and_every_nth_step_use_full_budget():
    sampler = BudgetSampler(32, warmup_epochs=2, full_every=8)
    assert all(sampler.sample(step, epoch) == 32 for step in range(50) for epoch in (0, 1))
    assert all(sampler.sample(step, 2) == 32 for step in range(0, 400, 8))
    assert any(sampler.sample(step, 2) < 32 for step in range(1, 100))


def test_draws_on_grid_biased_toward_large_budgets():
    sampler = BudgetSampler(32, warmup_epochs=0, full_every=0)
    counts = Counter(sampler.sample(step) for step in range(4000))
    assert set(counts) <= set(PAPER_GRID)
    assert set(counts) >= {2, 4, 8, 16, 32}
    small = sum(v for k, v in counts.items() if k <= 4)
    large = sum(v for k, v in counts.items() if k >= 16)
    assert large > small


def test_grid_is_clipped_to_k_max_and_disabled_sampler_is_full():
    sampler = BudgetSampler(8, warmup_epochs=0, full_every=0)
    assert sampler.grid == [2, 3, 4, 6, 8]
    assert {sampler.sample(s) for s in range(300)} <= {2, 3, 4, 6, 8}
    assert BudgetSampler(8, enabled=False).sample(5, 9) == 8
    assert BudgetSampler(6, grid=None, k_min=1).grid == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("kwargs", [{"k_min": 0}, {"k_min": 40}, {"bias": 0.0}, {"full_every": -1}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        BudgetSampler(32, **kwargs)


def test_warmup_in_optimizer_steps():
    sampler = BudgetSampler(32, warmup_steps=100, full_every=8)
    assert all(sampler.sample(step, epoch=0) == 32 for step in range(100))
    assert any(sampler.sample(step, epoch=0) < 32 for step in range(100, 200))
    assert sampler.dropout_start(steps_per_epoch=10**6) == 100
    assert BudgetSampler(32, warmup_epochs=2).dropout_start(steps_per_epoch=50) == 100
    assert BudgetSampler(32).warmup_epochs == 2  # no unit given: the authors' 2 epochs


def test_warmup_in_both_units_is_refused():
    with pytest.raises(ValueError, match="epochs or in optimizer steps, not both"):
        BudgetSampler(32, warmup_epochs=2, warmup_steps=8000)
    with pytest.raises(ValueError, match=">= 0"):
        BudgetSampler(32, warmup_steps=-1)
