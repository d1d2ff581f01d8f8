"""Shared timing and memory helpers: warm-up, repeats, median; CUDA events on GPU.

Peak memory: on CUDA the allocator's peak (torch.cuda.max_memory_allocated) above what was
allocated before the call; on CPU the rise of the process's peak resident set (VmHWM, reset
through /proc/self/clear_refs after malloc_trim returns freed heap to the OS), which counts
every byte the call touched, torch's or not.
"""

from __future__ import annotations

import ctypes
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass
class Measurement:
    median_ms: float
    min_ms: float
    repeats: int
    peak_mb: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    """One call in milliseconds: CUDA events on GPU (device time), perf_counter on CPU."""
    if device.type == "cuda":
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop)
    begin = time.perf_counter()
    fn()
    return (time.perf_counter() - begin) * 1e3


def measure(
    fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 5
) -> Measurement:
    """Median and min over `repeats` timed calls after `warmup` calls, plus one memory call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = [_time_once(fn, device) for _ in range(repeats)]
    return Measurement(statistics.median(times), min(times), repeats, peak_memory_mb(fn, device))


def peak_memory_mb(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak memory one call of fn adds on top of what is already held, in MiB."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    if not _reset_rss_peak():
        return None
    base = _status_kb("VmRSS")
    fn()
    return (_status_kb("VmHWM") - base) / 1024


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_rss_peak() -> bool:
    """Return freed heap to the OS and reset VmHWM to the current RSS; False where unsupported."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine_info(device: torch.device) -> dict:
    """What the numbers were measured on, including the load other processes put on the CPU."""
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def parse_ints(text: str) -> list[int]:
    """'1024,4096' -> [1024, 4096] (CLI lists)."""
    return [int(x) for x in text.split(",") if x]
