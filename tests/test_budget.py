"""Budget-dropout sampler: deterministic per (seed, step), the schedule, the bias toward large k."""

from collections import Counter

import pytest

from esssm.budget import PAPER_GRID, BudgetSampler, parse_budgets, select_budgets, sweep_budgets


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


def test_default_grid_is_the_papers_within_k_max_and_disabled_sampler_is_full():
    sampler = BudgetSampler(8, warmup_epochs=0, full_every=0)
    assert sampler.grid == [2, 3, 4, 6, 8]
    assert {sampler.sample(s) for s in range(300)} <= {2, 3, 4, 6, 8}
    assert BudgetSampler(8, enabled=False).sample(5, 9) == 8
    assert BudgetSampler(6, grid=None, k_min=1).grid == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"k_min": 0}, r"k_min=0 is outside 1\.\.k_max=32"), ({"k_min": 40}, r"k_min=40 is outside 1\.\.k_max=32"),
     ({"bias": 0.0}, "bias=0.0 must be > 0"), ({"full_every": -1}, "full_every=-1 must be >= 0"),
     ({"grid": [2, 4, 64]}, r"grid=\[2, 4, 64\] has \[64\] outside k_min\.\.k_max = 2\.\.32"),
     ({"grid": [1, 4]}, r"has \[1\] outside k_min\.\.k_max = 2\.\.32: drop them, or set k_min"),
     ({"grid": "all"}, "grid='all' must be 'paper', null")],
)
def test_bad_settings_are_refused_with_their_name_never_clamped(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BudgetSampler(32, **kwargs)


def test_default_k_min_fits_a_tiny_k_max():
    """The defaults adapt to k_max (they are not user settings): k_max = 1 trains at k = 1."""
    assert BudgetSampler(1).grid == [1] and BudgetSampler(1).k_min == 1
    assert BudgetSampler(8, k_min=3).grid == [3, 4, 6, 8]  # the paper grid within k_min..k_max


@pytest.mark.parametrize(
    ("value", "expected"),
    [("all", "all"), ("paper", "paper"), (None, None), ("4,2", [4, 2]), ([1, 8], [1, 8])],
)
def test_parse_budgets_reads_every_form(value, expected):
    assert parse_budgets(value, "--budgets") == expected


@pytest.mark.parametrize("value", ["2.5", "", "0,2", "2,2", "paperr", "-1", [0], [2, 2], []])
def test_parse_budgets_refuses_anything_else_naming_the_setting(value):
    with pytest.raises(ValueError, match=r"--budgets: expected 'all', 'paper' or distinct budgets >= 1"):
        parse_budgets(value, "--budgets")


def test_sweep_budgets_for_a_model():
    assert sweep_budgets(16, "paper") == sweep_budgets(16, None) == [1, 2, 3, 4, 6, 8, 12, 16]
    assert sweep_budgets(4, "all") == [1, 2, 3, 4] and sweep_budgets(8, "2,4") == [2, 4, 8]
    assert select_budgets(8, "2,4") == [2, 4]  # without k_max: for a cascade's stages
    assert sweep_budgets(None, "paper") == [None]
    with pytest.raises(ValueError, match=r"sweep\.val_budgets: budgets \[9, 12\] are outside 1\.\.k_max=8"):
        sweep_budgets(8, [2, 9, 12], "sweep.val_budgets")
    with pytest.raises(ValueError, match="sweep.val_budgets: expected"):
        sweep_budgets(None, "nonsense", "sweep.val_budgets")  # the form is checked even without a budget


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
