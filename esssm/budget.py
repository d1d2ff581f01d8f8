"""Budget dropout: the stochastic spectral budget drawn for each optimizer step."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

PAPER_GRID = (2, 3, 4, 6, 8, 12, 16, 24, 32)
PAPER_EVAL_BUDGETS = (32, 24, 16, 12, 8, 6, 4, 3, 2)


class BudgetSampler:
    """Draws the training budget k for an optimizer step, as a pure function of (seed, step).

    Full budget during the warm-up (given in epochs, as for LRA, or in optimizer steps, the
    natural unit for one-epoch corpora such as PG19; not both) and on every `full_every`-th
    optimizer step; otherwise
    u ~ U(0, 1), u' = 1 - (1 - u)^(1 / bias) (bias < 1 favours large k), k = exp(log k_min +
    u' (log k_max - log k_min)) snapped to the nearest grid value. Being stateless,
    every DDP rank and every gradient-accumulation micro-batch of a step draws the same k, and a
    resumed run continues the exact sequence.
    """

    DEFAULT_K_MIN = 2

    def __init__(
        self,
        k_max: int,
        k_min: int = DEFAULT_K_MIN,
        grid: Sequence[int] | None = PAPER_GRID,
        warmup_epochs: int | None = None,
        full_every: int = 8,
        bias: float = 0.6,
        seed: int = 0,
        enabled: bool = True,
        warmup_steps: int | None = None,
    ) -> None:
        """warmup_epochs / warmup_steps: give one (None for the other); both None = the
        authors' 2 epochs. full_every counts optimizer steps (0 disables it)."""
        if not 1 <= k_min <= k_max:
            raise ValueError(f"need 1 <= k_min <= k_max, got k_min={k_min}, k_max={k_max}")
        if bias <= 0:
            raise ValueError(f"bias must be > 0, got {bias}")
        if full_every < 0:
            raise ValueError(f"full_every must be >= 0 (0 disables it), got {full_every}")
        self.k_max, self.k_min, self.bias, self.seed = k_max, k_min, bias, seed
        self.warmup_epochs, self.warmup_steps = warmup_length(warmup_epochs, warmup_steps)
        self.full_every, self.enabled = full_every, enabled
        values = range(k_min, k_max + 1) if grid is None else grid
        self.grid = sorted({k for k in values if k_min <= k <= k_max} | {k_max})

    def _uniform(self, step: int) -> float:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return torch.rand((), generator=generator, dtype=torch.float64).item()

    def is_full(self, step: int, epoch: int) -> bool:
        """Whether this step trains at the full budget (warm-up, every n-th step, or disabled)."""
        every_nth = self.full_every > 0 and step % self.full_every == 0
        warmup = epoch < self.warmup_epochs or step < self.warmup_steps
        return not self.enabled or warmup or every_nth

    def dropout_start(self, steps_per_epoch: int) -> int:
        """The first optimizer step that may draw a budget below k_max, for a given epoch length."""
        return max(self.warmup_epochs * steps_per_epoch, self.warmup_steps)

    def sample(self, step: int, epoch: int = 0) -> int:
        """The budget for optimizer step `step` (global step) in epoch `epoch`."""
        if self.is_full(step, epoch):
            return self.k_max
        u = 1.0 - (1.0 - self._uniform(step)) ** (1.0 / self.bias)
        k = math.exp(math.log(self.k_min) + u * (math.log(self.k_max) - math.log(self.k_min)))
        return min(self.grid, key=lambda g: abs(g - k))


def warmup_length(epochs: int | None, steps: int | None) -> tuple[int, int]:
    """(warm-up epochs, warm-up steps) from a warm-up given in one unit; None for both = 2 epochs."""
    if epochs is not None and steps is not None:
        raise ValueError(
            f"give the full-budget warm-up in epochs or in optimizer steps, not both (got "
            f"warmup_epochs={epochs}, warmup_steps={steps}): set the other one to null"
        )
    if (epochs or 0) < 0 or (steps or 0) < 0:
        raise ValueError(f"the warm-up must be >= 0 (0 disables it), got epochs={epochs}, steps={steps}")
    if epochs is None and steps is None:
        return 2, 0
    return epochs or 0, steps or 0


def sweep_budgets(k_max: int | None, budgets: Sequence[int] | str | None = None) -> list[int | None]:
    """The budgets a sweep evaluates, ascending: "all" = 1..k_max; "paper" or None = the paper's
    evaluation budgets up to k_max, plus 1 and k_max. A model without a budget gets [None]."""
    if k_max is None:
        return [None]
    if budgets == "all":
        return list(range(1, k_max + 1))
    if budgets == "paper":
        budgets = None
    if isinstance(budgets, str):
        raise ValueError(f"budgets must be a list of ints, 'all' or 'paper', got {budgets!r}")
    chosen = set(PAPER_EVAL_BUDGETS) | {1} if budgets is None else set(budgets)
    bad = sorted(k for k in chosen if not 1 <= k <= k_max and budgets is not None)
    if bad:
        raise ValueError(f"sweep budgets {bad} are outside [1, k_max={k_max}]")
    return sorted({k for k in chosen if k <= k_max} | {k_max})


def curve_summary(budgets: Sequence[int], accuracy: Sequence[float], fraction: float = 0.98) -> dict:
    """Area under the accuracy-vs-log2(k) curve, normalised to a mean accuracy, and the
    smallest budget reaching `fraction` of the full-budget (largest k) accuracy."""
    pairs = sorted(zip(budgets, accuracy))
    ks, accs = [k for k, _ in pairs], [a for _, a in pairs]
    full = accs[-1]
    k_reach = next((k for k, a in pairs if a >= fraction * full), ks[-1])
    if len(ks) == 1:
        return {"auc": accs[0], "k98": k_reach, "full": full}
    x = [math.log2(k) for k in ks]
    area = sum((x[i + 1] - x[i]) * (accs[i + 1] + accs[i]) / 2 for i in range(len(x) - 1))
    return {"auc": area / (x[-1] - x[0]), "k98": k_reach, "full": full}
