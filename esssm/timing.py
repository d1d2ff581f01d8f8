"""Wall-clock (or CUDA device) time of a callable: the one timer of the tools and benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Mapping

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


# Repeated timings of one call that spread by more than this fraction of their median are noise
# (another process took the cores), not a property of the call.
NOISY_SPREAD = 0.25


def interleaved_ms(
    calls: Mapping[Hashable, Callable[[], object]],
    device: torch.device | str = "cpu",
    rounds: int = 5,
    warmup: int = 1,
    timer: Callable[[Callable[[], object], torch.device | str], float] = time_once,
    advance: Callable[[], object] | None = None,
) -> dict[Hashable, list[float]]:
    """Milliseconds of each call in `rounds` interleaved rounds (every call once per round) after
    `warmup` untimed rounds, {key: [ms per round]}: a burst of load from other processes then hits
    every call alike instead of skewing whichever one was being timed. `timer(fn, device) -> ms`;
    `advance()` is called after each round (a progress line)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    times: dict[Hashable, list[float]] = {key: [] for key in calls}
    for r in range(warmup + rounds):
        for key, call in calls.items():
            ms = timer(call, device)
            if r >= warmup:
                times[key].append(ms)
        if advance is not None:
            advance()
    return times


def spread(times: list[float]) -> float:
    """(max - min) / median of repeated timings: 0 when they agree; above NOISY_SPREAD, noise."""
    return (max(times) - min(times)) / statistics.median(times) if times else 0.0
