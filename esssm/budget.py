"""Budget dropout (the stochastic spectral budget drawn for each optimizer step), and the one
reading of a set of evaluation budgets ("all", "paper", "2,4,8") used by every command and config."""

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
        k_min: int | None = None,
        grid: Sequence[int] | str | None = "paper",
        warmup_epochs: int | None = None,
        full_every: int = 8,
        bias: float = 0.6,
        seed: int = 0,
        enabled: bool = True,
        warmup_steps: int | None = None,
    ) -> None:
        """k_min: the smallest budget drawn (None: DEFAULT_K_MIN, or k_max when that is smaller).
        grid: the budgets a draw snaps to, always with k_max: "paper" (the paper's grid within
        k_min..k_max), None (every integer in k_min..k_max) or a list inside k_min..k_max.
        warmup_epochs / warmup_steps: give one (None for the other); both None = the authors'
        2 epochs. full_every counts optimizer steps (0 disables it). A setting out of range is
        refused with its name and value, never clamped."""
        k_min = min(self.DEFAULT_K_MIN, k_max) if k_min is None else k_min
        if not 1 <= k_min <= k_max:
            raise ValueError(f"k_min={k_min} is outside 1..k_max={k_max} (k_max: the backbone's full budget)")
        if bias <= 0:
            raise ValueError(f"bias={bias} must be > 0")
        if full_every < 0:
            raise ValueError(f"full_every={full_every} must be >= 0 (0 disables it)")
        self.k_max, self.k_min, self.bias, self.seed = k_max, k_min, bias, seed
        self.warmup_epochs, self.warmup_steps = warmup_length(warmup_epochs, warmup_steps)
        self.full_every, self.enabled = full_every, enabled
        self.grid = snap_grid(grid, k_min, k_max)

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
            f"warmup_epochs={epochs} and warmup_steps={steps}: give the full-budget warm-up in epochs or "
            "in optimizer steps, not both; set the other one to null"
        )
    for name, value in (("warmup_epochs", epochs), ("warmup_steps", steps)):
        if (value or 0) < 0:
            raise ValueError(f"{name}={value} must be >= 0 (0 disables the warm-up)")
    if epochs is None and steps is None:
        return 2, 0
    return epochs or 0, steps or 0


def snap_grid(grid: Sequence[int] | str | None, k_min: int, k_max: int) -> list[int]:
    """The training budgets a draw snaps to, ascending, with k_max: "paper" = the paper's grid
    within k_min..k_max, None = every integer in k_min..k_max, or the given list, which must lie
    inside k_min..k_max (a value outside would never be drawn, or drawn below k_min)."""
    if grid == "paper":
        return sorted({k for k in PAPER_GRID if k_min <= k <= k_max} | {k_max})
    if grid is None:
        return list(range(k_min, k_max + 1))
    if isinstance(grid, str) or not all(isinstance(k, int) for k in grid):
        raise ValueError(f"grid={grid!r} must be 'paper', null (every k) or a list of integers")
    outside = sorted(k for k in set(grid) if not k_min <= k <= k_max)
    if outside:
        raise ValueError(
            f"grid={list(grid)} has {outside} outside k_min..k_max = {k_min}..{k_max}: drop them, or set "
            "k_min (or the backbone's k_max) to include them"
        )
    return sorted(set(grid) | {k_max})


BUDGET_WORDS = ("all", "paper")


def parse_budgets(value: str | Sequence[int] | None, setting: str = "") -> list[int] | str | None:
    """The project's one reading of a set of evaluation budgets, from the command line or a config:
    "all" (1..k_max), "paper" (the paper's evaluation budgets), a comma list such as "2,4,8", or a
    list of ints; None (the caller's default) stays None. Budgets must be distinct integers >= 1;
    anything else is refused with `setting` named. Whether they fit a model is `sweep_budgets`'s."""
    if value is None or value in BUDGET_WORDS:
        return value
    prefix = f"{setting}: " if setting else ""
    expected = f"{prefix}expected 'all', 'paper' or distinct budgets >= 1 such as 2,4,8; got {value!r}"
    if isinstance(value, str):
        try:
            value = [int(part) for part in value.split(",")]
        except ValueError:
            raise ValueError(expected) from None
    budgets = list(value)
    if not budgets or not all(isinstance(k, int) and k >= 1 for k in budgets) or len(set(budgets)) < len(budgets):
        raise ValueError(expected)
    return budgets


def select_budgets(k_max: int, budgets: Sequence[int] | str | None, setting: str = "budgets") -> list[int]:
    """The budgets a setting names for a model of full budget k_max, ascending (see `parse_budgets`):
    "all" = 1..k_max; "paper" or None = the paper's evaluation budgets up to k_max, plus 1 and k_max;
    a list is refused, naming `setting`, when a budget lies beyond k_max."""
    budgets = parse_budgets(budgets, setting)
    if budgets == "all":
        return list(range(1, k_max + 1))
    if budgets in (None, "paper"):
        return sorted({k for k in PAPER_EVAL_BUDGETS if k <= k_max} | {1, k_max})
    outside = sorted(k for k in budgets if k > k_max)
    if outside:
        raise ValueError(f"{setting}: budgets {outside} are outside 1..k_max={k_max}")
    return sorted(budgets)


def sweep_budgets(
    k_max: int | None, budgets: Sequence[int] | str | None = None, setting: str = "budgets"
) -> list[int | None]:
    """The budgets a sweep evaluates: `select_budgets`, always with k_max (the full-budget score).
    A model without a budget gets [None] (the setting's form is still checked)."""
    if k_max is None:
        parse_budgets(budgets, setting)
        return [None]
    return sorted(set(select_budgets(k_max, budgets, setting)) | {k_max})


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
