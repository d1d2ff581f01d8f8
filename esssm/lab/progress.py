"""Live progress: of training runs that train in other processes (`./reproduce.sh`), and of the
phases a command runs itself (budget sweeps, cascade, plan, smoke).

The fit process runs `ProgressFile`, a callback that writes a small JSON record (epoch, step,
total steps, seconds per step, ETA, latest full-budget validation metric, seconds of the latest
validation pass and sweep) atomically beside the run's log. The parent polls these records and
`ProgressBoard` draws one line per run: tqdm bars redrawn in place on a terminal, plain lines
every `interval` seconds otherwise (CI, nohup), plus a whole-job ETA line that includes the
test evaluation after training. `PhaseProgress` draws one phase of counted units the same way
(`SweepProgress` feeds it from an evaluation trainer).
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import lightning as L

from esssm.files import atomic_write_text

METRICS = ("val/bpb", "val/acc")  # the full-budget score shown: bits per byte for LMs, else accuracy


class ProgressFile(L.Callback):
    """Writes the training progress to `path` (JSON, atomically) at most every `every_s` seconds,
    after each validation, and once more (with "done") when training ends."""

    def __init__(self, path: str, every_s: float = 2.0) -> None:
        super().__init__()
        self.path, self.every_s = Path(path), every_s
        self._start, self._start_step, self._written = 0.0, 0, 0.0
        self._val_start, self.val_s, self.sweep_s, self.test_budgets = 0.0, None, None, None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._start_step = time.monotonic(), trainer.global_step
        self._write(trainer, done=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self._written >= self.every_s:
            self._write(trainer, done=False)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.monotonic()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Also keeps the seconds of this pass, and of it as a sweep of every budget: what the
        test sweep after training will take (`evaluation_guess`)."""
        if trainer.sanity_checking:
            return
        from esssm.train.callbacks import BudgetSweep

        self.val_s = time.monotonic() - self._val_start
        for sweep in (cb for cb in trainer.callbacks if isinstance(cb, BudgetSweep)):
            self.test_budgets = len(sweep.budgets["test"])
            if sweep.sweeps_validation(trainer):
                self.sweep_s = self.val_s
        self._write(trainer, done=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, done=True)

    def _write(self, trainer: L.Trainer, done: bool) -> None:
        if not trainer.is_global_zero:
            return
        elapsed = time.monotonic() - self._start
        steps = trainer.global_step - self._start_step
        total = trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else None
        per_step = elapsed / steps if steps else None
        record = {
            "epoch": trainer.current_epoch, "max_epochs": trainer.max_epochs,
            "step": trainer.global_step, "total": total, "s_per_step": per_step,
            "eta_s": per_step * max(0, total - trainer.global_step) if per_step and total else None,
            "elapsed_s": elapsed, "done": done, **latest_metric(trainer.callback_metrics),
            "val_s": self.val_s, "sweep_s": self.sweep_s, "test_budgets": self.test_budgets,
        }
        atomic_write_text(self.path, json.dumps(record))
        self._written = time.monotonic()


def latest_metric(metrics: dict[str, Any]) -> dict[str, Any]:
    """{"metric": name, "value": v} of the first of METRICS logged so far, else {}."""
    for name in METRICS:
        if name in metrics:
            return {"metric": name, "value": float(metrics[name])}
    return {}


def evaluation_guess(record: dict[str, Any] | None) -> float | None:
    """Seconds the test sweep of a run will take, from its training record: its latest validation
    sweep of every budget (the quick and paper profiles' test split is as large as validation),
    else its latest full-budget validation pass times the test budgets; None before either ran."""
    if not record:
        return None
    if record.get("sweep_s") is not None:
        return record["sweep_s"]
    if record.get("val_s") is not None and record.get("test_budgets"):
        return record["val_s"] * record["test_budgets"]
    return None


def remaining_evaluation(guesses: list[float | None], measured: list[float]) -> float | None:
    """Seconds of the evaluations still to run: each one's guess, or the mean of those measured
    so far where a run has none; None when a run has neither."""
    mean = sum(measured) / len(measured) if measured else None
    filled = [mean if g is None else g for g in guesses]
    return None if None in filled else float(sum(filled))


def read_record(path: Path) -> dict[str, Any] | None:
    """The latest record, or None before the fit process wrote one."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def duration(seconds: float | None) -> str:
    """'1h02m', '4m05s', '12s', or '?' when unknown."""
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def score(record: dict[str, Any]) -> str:
    """'val acc 61.20%' or 'val bpb 2.310', or 'val -' before the first validation."""
    if "metric" not in record:
        return "val -"
    if record["metric"] == "val/bpb":
        return f"val bpb {record['value']:.3f}"
    return f"val acc {100 * record['value']:.2f}%"


def describe(label: str, record: dict[str, Any] | None) -> str:
    """One progress line: run, epoch, step/total, s/step, ETA and the latest validation score."""
    if record is None:
        return f"{label}: starting"
    epochs = record["max_epochs"] if record["max_epochs"] not in (None, -1) else "?"
    per_step = f"{record['s_per_step']:.2f} s/step" if record["s_per_step"] else "- s/step"
    return (f"{label}: epoch {record['epoch'] + (0 if record['done'] else 1)}/{epochs}, "
            f"step {record['step']}/{record['total'] or '?'}, {per_step}, "
            f"ETA {duration(0 if record['done'] else record['eta_s'])}, {score(record)}")


def progress_bar(stream: TextIO, total: int | None, desc: str) -> Any:
    """A tqdm bar redrawn in place: a short bar, then the progress line as its description."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=stream, dynamic_ncols=True, leave=False, bar_format="{bar:12} {desc}")


def summary(label: str, record: dict[str, Any] | None, seconds: float) -> str:
    """The final line of a trained run."""
    if record is None:
        return f"{label}: trained in {duration(seconds)}"
    per_step = f", {record['s_per_step']:.2f} s/step" if record["s_per_step"] else ""
    return f"{label}: trained in {duration(seconds)}, {record['step']} steps{per_step}, {score(record)}"


@dataclass
class _Slot:
    label: str
    path: Path
    started: float = field(default_factory=time.monotonic)
    bar: Any = None


class ProgressBoard:
    """Draws the progress of the runs training now and a whole-job ETA, from a polling thread.

    On a terminal each run is a tqdm bar redrawn in place; otherwise (a file, a pipe) every
    `interval` seconds one plain line per run and one for the job. `workers` runs train at
    once; `queued` runs wait. The job ETA assumes a queued run takes as long as the ones seen.
    """

    def __init__(self, queued: int, workers: int, stream: TextIO | None = None, interval: float = 60.0) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.queued, self.workers, self.interval = queued, workers, interval
        self.slots: dict[str, _Slot] = {}
        self.durations: list[float] = []
        self.evaluations: dict[str, float | None] = {}  # trained run -> guessed test-sweep seconds
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.job_bar: Any = None

    def __enter__(self) -> ProgressBoard:
        if self.tty:
            from tqdm import tqdm

            self.job_bar = tqdm(file=self.stream, dynamic_ncols=True, leave=False, bar_format="{desc}")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for slot in list(self.slots.values()):
            self._close(slot)
        if self.job_bar is not None:
            self.job_bar.close()

    def say(self, message: str) -> None:
        """A status line that never tears a bar or interleaves with another line."""
        with self.lock:
            if self.tty:
                from tqdm import tqdm

                tqdm.write(message, file=self.stream)
            else:
                self.stream.write(message + "\n")
                self.stream.flush()

    def start(self, label: str, path: Path) -> None:
        with self.lock:
            self.queued = max(0, self.queued - 1)
            self.slots[label] = slot = _Slot(label, path)
            if self.tty:
                slot.bar = progress_bar(self.stream, 1, label)

    def finish(self, label: str, ok: bool) -> None:
        """Ends a run's line and prints its summary (or nothing when it failed: the caller says why)."""
        with self.lock:
            slot = self.slots.pop(label)
            seconds = time.monotonic() - slot.started
            if ok:
                self.durations.append(seconds)
                self.evaluations[label] = evaluation_guess(read_record(slot.path))
            self._close(slot)
        if ok:
            self.say(summary(label, read_record(slot.path), seconds))

    def job_eta(self, records: dict[str, dict | None]) -> float | None:
        """Seconds until every run is trained: the slowest running run, then the queue in waves."""
        etas = [r["eta_s"] for r in records.values() if r and r["eta_s"] is not None]
        if not records and not self.queued:
            return 0.0
        if len(etas) < len(records):
            return None
        guesses = self.durations + [r["elapsed_s"] + r["eta_s"] for r in records.values()]
        per_run = sum(guesses) / len(guesses) if guesses else None
        waves = math.ceil(self.queued / self.workers)
        if waves and per_run is None:
            return None
        return max(etas, default=0.0) + waves * (per_run or 0.0)

    def lines(self) -> tuple[dict[str, str], str]:
        """({run: its line}, the job line), from the records on disk now."""
        with self.lock:
            slots = list(self.slots.values())
            done = len(self.durations)
        records = {slot.label: read_record(slot.path) for slot in slots}
        runs = {label: describe(label, record) for label, record in records.items()}
        job = (f"job: {done} trained, {len(slots)} training, {self.queued} queued, "
               f"ETA {self.eta_text(records)}")
        return runs, job

    def eta_text(self, records: dict[str, dict | None]) -> str:
        """'6m10s (test evaluation 1m20s of it)': training, then the test sweep of every run one
        at a time; the evaluation of a queued run is guessed as the mean of those known."""
        training = self.job_eta(records)
        known = [*self.evaluations.values(), *(evaluation_guess(r) for r in records.values())]
        evaluation = remaining_evaluation(known + [None] * self.queued,
                                          [g for g in known if g is not None])
        if evaluation is None:
            return f"{duration(training)} + test evaluation ?"
        total = None if training is None else training + evaluation
        return f"{duration(total)} (test evaluation {duration(evaluation)} of it)"

    def draw(self) -> None:
        runs, job = self.lines()
        if not self.tty:
            if runs:
                self.say("\n".join([*runs.values(), job]))
            return
        with self.lock:
            for label, line in runs.items():
                if label in self.slots:
                    bar, record = self.slots[label].bar, read_record(self.slots[label].path)
                    if record and record["total"]:
                        bar.total, bar.n = record["total"], record["step"]
                    bar.set_description_str(line)
            self.job_bar.set_description_str(job)

    def _loop(self) -> None:
        wait = 1.0 if self.tty else self.interval
        while not self._stop.wait(wait):
            self.draw()

    def _close(self, slot: _Slot) -> None:
        if slot.bar is not None:
            slot.bar.close()


class PhaseProgress:
    """Progress of one phase run in this process, in `total` counted units (the batches of a
    budget sweep, the policies of a cascade, the timing rounds of a plan, the configs of a smoke):
    'label: 3/16 batches, 12s elapsed, ETA 40s'. On a terminal a tqdm bar redrawn in place;
    otherwise a plain line at the start, at most every `interval` seconds and at the end.
    `expected_s` (a guess of the whole phase) gives the ETA until the first unit is done.
    `say` prints a line without tearing the bar."""

    def __init__(self, label: str, total: int | None, unit: str, stream: TextIO | None = None,
                 interval: float = 30.0, expected_s: float | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.label, self.total, self.unit, self.interval, self.expected_s = label, total, unit, interval, expected_s
        self.done, self.started, self.printed, self.closed = 0, time.monotonic(), -math.inf, False
        self.bar = progress_bar(self.stream, total, self.line()) if self.tty else None
        self._show(force=True)

    def __enter__(self) -> PhaseProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def eta(self) -> float | None:
        elapsed = time.monotonic() - self.started
        if self.done and self.total:
            return elapsed / self.done * max(0, self.total - self.done)
        return None if self.expected_s is None else max(0.0, self.expected_s - elapsed)

    def line(self) -> str:
        elapsed = duration(time.monotonic() - self.started)
        return (f"{self.label}: {self.done}/{self.total or '?'} {self.unit}, {elapsed} elapsed, "
                f"ETA {duration(self.eta())}")

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._show(force=False)

    def say(self, message: str) -> None:
        if self.bar is not None:
            from tqdm import tqdm

            tqdm.write(message, file=self.stream)
        else:
            self.stream.write(message + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.bar is not None:
            self.bar.close()
        self.say(f"{self.label}: {self.done} {self.unit} in {duration(time.monotonic() - self.started)}")

    def _show(self, force: bool) -> None:
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.set_description_str(self.line())
        elif force or time.monotonic() - self.printed >= self.interval:
            self.say(self.line())
            self.printed = time.monotonic()


class SweepProgress(L.Callback):
    """`PhaseProgress` of the evaluation passes of a trainer (the budget sweep of `esssm sweep`
    and `./reproduce.sh`): one unit per batch, each evaluated at every budget of the sweep."""

    def __init__(self, label: str, stream: TextIO | None = None, interval: float = 30.0,
                 expected_s: float | None = None) -> None:
        super().__init__()
        self.label, self.stream, self.interval, self.expected_s = label, stream, interval, expected_s
        self.phase: PhaseProgress | None = None

    def _start(self, batches: list[int | float]) -> None:
        total = sum(batches)
        self.phase = PhaseProgress(self.label, int(total) if math.isfinite(total) else None, "batches",
                                   self.stream, self.interval, self.expected_s)

    def _advance(self) -> None:
        if self.phase is not None:
            self.phase.advance()

    def _end(self) -> None:
        if self.phase is not None:
            self.phase.close()
            self.phase = None

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer.num_test_batches)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._start(trainer.num_val_batches)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._advance()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._advance()

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end()
