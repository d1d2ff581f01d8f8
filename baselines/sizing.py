"""Size a baseline to a target parameter count by choosing its width (d_model)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from esssm.model import count_parameters


def count_at_width(build: Callable[[int], nn.Module], width: int) -> int:
    """Parameters of `build(width)` (built on the CPU and dropped)."""
    with torch.no_grad():
        return count_parameters(build(width))


def match_width(
    build: Callable[[int], nn.Module],
    target_params: int,
    multiple: int = 8,
    max_width: int = 8192,
) -> int:
    """The multiple of `multiple` in [multiple, max_width] whose `build(width)` has the parameter
    count closest to `target_params`.

    Parameter counts are (close to) quadratic in the width, so a quadratic through three small
    widths predicts the answer and a short walk over exact counts settles it: only a handful of
    full-size models are ever built. `multiple` should cover the model's divisibility needs,
    e.g. lcm(8, n_heads) for the Transformer, headdim / expand for Mamba-2. Example:
        match_width(lambda d: Mamba(d_model=d, n_layers=8), count_parameters(esssm))
    """
    top = max_width // multiple  # widths are handled in units of `multiple`
    if top < 1:
        raise ValueError(f"max_width={max_width} is below multiple={multiple}")
    counts: dict[int, int] = {}

    def gap(units: int) -> int:
        if units not in counts:
            counts[units] = count_at_width(build, units * multiple)
        return abs(counts[units] - target_params)

    guess = _quadratic_guess([(u, count_at_width(build, u * multiple)) for u in (2, 4, 8)], target_params)
    best = min(max(guess, 1), top)
    for step in (-1, 1):  # walk while the exact gap shrinks
        while 1 <= best + step <= top and gap(best + step) < gap(best):
            best += step
    return best * multiple


def _quadratic_guess(points: list[tuple[int, int]], target: int) -> int:
    """Nearest integer x >= 1 where the quadratic through `points` (x, count) reaches `target`."""
    a, b, c = np.polyfit(*zip(*points), deg=2)
    roots = [r.real for r in np.roots([a, b, c - target]) if abs(r.imag) < 1e-9 and r.real > 0]
    return round(max(roots)) if roots else 1


def relative_gap(params: int, target_params: int) -> float:
    """|params - target| / target: configs keep this under 0.1."""
    return abs(params - target_params) / target_params
