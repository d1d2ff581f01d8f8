"""Wall-clock latency of a callable: warm-up, repeats, median; CUDA-synchronised on GPUs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_latency_ms(
    fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 2, repeats: int = 5
) -> float:
    """Median milliseconds of `fn()` over `repeats` runs after `warmup` untimed runs.

    On CUDA the device is synchronised around every run so the time covers the kernels, not
    only their launch.
    """
    cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)
