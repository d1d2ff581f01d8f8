"""Shared timing and memory helpers: warm-up, repeats, median; CUDA events on GPU.

Peak memory: on CUDA the allocator's peak (torch.cuda.max_memory_allocated) above what was
allocated before the call; on CPU the rise of the process's peak resident set (VmHWM, reset
through /proc/self/clear_refs after malloc_trim returns freed heap to the OS), which counts
every byte the call touched, torch's or not.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch

from esssm import timing
from esssm.files import atomic_write_text
from esssm.layer import ESSSMLayer


@dataclass
class Measurement:
    median_ms: float
    min_ms: float
    repeats: int
    peak_mb: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def reference_twin(layer: ESSSMLayer) -> ESSSMLayer:
    """The naive yardstick: a copy of `layer` (same weights and filters) that mixes its channels
    with the plain reference of the formula (`fast=False`, every convolution materialised)."""
    twin = copy.deepcopy(layer)
    twin.settings = replace(twin.settings, fast=False)
    return twin


def inference_call(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], object]:
    """fn(x) under torch.no_grad: the inference workload."""

    def run() -> object:
        with torch.no_grad():
            return fn(x)

    return run


def training_call(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, module: torch.nn.Module
) -> Callable[[], object]:
    """Forward + backward of a mean-square loss, gradients (input's too) reset each call."""
    x = x.detach().requires_grad_()

    def run() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        fn(x).square().mean().backward()

    return run


def workload(
    fn, x: torch.Tensor, module: torch.nn.Module, mode: str, amp: bool = False
) -> Callable[[], object]:
    """mode 'inference' or 'training'; amp runs it under bf16 autocast."""
    if mode not in ("inference", "training"):
        raise ValueError(f"mode must be 'inference' or 'training', got {mode!r}")
    run = inference_call(fn, x) if mode == "inference" else training_call(fn, x, module)
    if not amp:
        return run

    def run_amp() -> object:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return run()

    return run_amp


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    """One call in milliseconds: CUDA events on GPU (device time), perf_counter on CPU."""
    return timing.time_once(fn, device, device_time=True)


def measure(
    fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 5
) -> Measurement:
    """Median and min over `repeats` timed calls after `warmup` calls, plus one memory call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = [time_once(fn, device) for _ in range(repeats)]
    return Measurement(statistics.median(times), min(times), repeats, peak_memory_mb(fn, device))


def measure_or_none(
    fn: Callable[[], object], device: torch.device, warmup: int = 1, repeats: int = 5
) -> Measurement | None:
    """measure(), or None (reported) when the device runs out of memory."""
    try:
        return measure(fn, device, warmup, repeats)
    except torch.OutOfMemoryError:
        print("  out of memory: row left out", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return None


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


def add_common_args(p: argparse.ArgumentParser, lengths: list[int] | None, cuda_tokens: int) -> None:
    """CLI options every benchmark shares (--lengths only with default lengths); `--tokens`
    defaults to 1 sequence on CPU."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    if lengths is not None:
        p.add_argument("--lengths", type=parse_ints, default=lengths)
    p.add_argument("--modes", type=lambda s: s.split(","), default=["inference", "training"])
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--k-max", type=int, default=32)
    p.add_argument("--batch", type=int, default=None, help="fixed batch (default: --tokens // L)")
    p.add_argument("--tokens", type=int, default=None,
                   help=f"tokens per batch without --batch (CPU: 1 sequence, CUDA: {cuda_tokens})")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the rows and machine info here")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (FFTs stay float32)")
    p.set_defaults(cuda_tokens=cuda_tokens)


def parse_cpu_run(p: argparse.ArgumentParser) -> tuple[argparse.Namespace, dict]:
    """Parse a whole-model CPU benchmark's options plus --threads and --json; apply --threads
    and return the arguments and the machine info of the run."""
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="write the rows and machine info here")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args, machine_info(torch.device("cpu"))


def start(args: argparse.Namespace) -> tuple[torch.device, dict]:
    """Apply --threads and --tokens defaults; the device and the machine info of the run."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.tokens is None:
        args.tokens = args.cuda_tokens if device.type == "cuda" else 1
    return device, machine_info(device)


def finish(args: argparse.Namespace, info: dict, rows: list[dict], table: str) -> None:
    """Print the table and machine info; write the JSON when asked."""
    info["loadavg_end"] = os.getloadavg()
    print(table)
    print(f"machine: {info}")
    if args.json:
        atomic_write_text(args.json, json.dumps({"args": vars(args), "machine": info, "rows": rows}, indent=1))
