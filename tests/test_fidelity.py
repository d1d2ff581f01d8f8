"""Switches between the authors' choices and the project's (docs/fidelity.md)."""

import pytest
import torch

from esssm.train.lit import warmup_ema


@pytest.mark.parametrize("warmup,expected", [(True, 0.1), (False, 0.999)])
def test_ema_warmup_switch(warmup, expected):
    """First update: decay (1 + 0) / (10 + 0) = 0.1 with the warm-up, the constant 0.999 without."""
    ema, params = [torch.zeros(3)], [torch.ones(3)]
    warmup_ema(0.999, warmup)(ema, params, torch.tensor(0))
    torch.testing.assert_close(ema[0], torch.full((3,), 1.0 - expected))


def test_ema_warmup_reaches_the_constant_decay():
    ema, params = [torch.zeros(1)], [torch.ones(1)]
    warmup_ema(0.999)(ema, params, torch.tensor(8990))
    torch.testing.assert_close(ema[0], torch.full((1,), 0.001))
