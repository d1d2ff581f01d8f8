"""Wall-clock (or CUDA device) time of a callable: the one timer of the tools and benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def time_once(fn: Callable[[], object], device: torch.device | str = "cpu", device_time: bool = False) -> float:
    """Milliseconds of one call of `fn`.

    On CUDA the device is synchronised around the call, so the time covers the kernels and not
    only their launch; device_time=True times the kernels alone with CUDA events instead (what
    the benchmarks report). On a CPU both are perf_counter wall time.
    """
    cuda = torch.device(device).type == "cuda"
    if cuda and device_time:
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop)
    if cuda:
        torch.cuda.synchronize(device)
    begin = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    return (time.perf_counter() - begin) * 1000.0


def median_latency_ms(
    fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 2, repeats: int = 5
) -> float:
    """Median milliseconds of `fn()` over `repeats` synchronised runs after `warmup` untimed runs."""
    for _ in range(warmup):
        fn()
    return statistics.median(time_once(fn, device) for _ in range(repeats))
