"""Live progress of runs training in other processes: the record a fit writes, and the lines the
board draws from it (plain lines when stdout is not a terminal, tqdm redrawn in place on one)."""

from __future__ import annotations

import io
import json
import threading

import lightning as L
from toy_data import ToyDataModule

from esssm.files import atomic_write_text
from esssm.lab.progress import (
    PhaseProgress, ProgressBoard, ProgressFile, describe, duration, evaluation_guess,
    remaining_evaluation,
)
from esssm.lab.quiet import quiet_banners
from esssm.lab.sweep import run_sweep
from esssm.model import ESSSM
from esssm.train.callbacks import BudgetSweep
from esssm.train.lit import SequenceModule


def test_fit_writes_a_progress_record(tmp_path):
    path = tmp_path / "progress.json"
    L.seed_everything(0)
    task = SequenceModule(ESSSM(d_model=16, n_layers=1, seq_len=24, k_max=4), num_classes=3, vocab_size=8,
                        budget={"warmup_epochs": 0})
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[BudgetSweep(every_n_epochs=2), ProgressFile(str(path))])
    trainer.fit(task, datamodule=ToyDataModule(train_size=32, val_size=21))
    record = json.loads(path.read_text())
    assert record["done"] and record["step"] == record["total"] == 4 and record["max_epochs"] == 2
    assert record["s_per_step"] > 0 and record["eta_s"] == 0
    assert record["metric"] == "val/acc" and 0 <= record["value"] <= 1
    assert describe("t/m/seed0", record).startswith("t/m/seed0: epoch 2/2, step 4/4, ")
    # the last epoch's validation swept every budget: its seconds guess the test sweep's
    assert record["test_budgets"] == 4 and record["sweep_s"] == record["val_s"] > 0
    assert evaluation_guess(record) == record["sweep_s"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(step: int, total: int, eta: float) -> str:
    return json.dumps({"epoch": 0, "max_epochs": 1, "step": step, "total": total, "s_per_step": 0.5,
                       "eta_s": eta, "elapsed_s": 10.0, "done": False, "metric": "val/acc", "value": 0.25})


class Ticks:
    """Stands in for a board's stop event, which is its drawing thread's clock (the thread draws
    each time `wait(interval)` times out): here an interval passes only when the test calls `tick`."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []  # of every wait the thread started
        self.passed = 0
        self.stopped = False
        self._change = threading.Condition()

    def wait(self, timeout: float) -> bool:
        with self._change:
            self.timeouts.append(timeout)
            self._change.notify_all()
            self._change.wait_for(lambda: self.stopped or self.passed >= len(self.timeouts))
            return self.stopped

    def set(self) -> None:
        with self._change:
            self.stopped = True
            self._change.notify_all()

    def waiting(self, n: int) -> None:
        """Returns once the thread has started its n-th wait."""
        with self._change:
            assert self._change.wait_for(lambda: len(self.timeouts) >= n, timeout=10), "the thread never waited"

    def tick(self) -> None:
        """One interval passes; returns once the thread has drawn and waits again."""
        with self._change:
            self.passed += 1
            self._change.notify_all()
        self.waiting(self.passed + 1)


def test_board_prints_plain_lines_every_interval_and_a_job_eta_when_not_a_terminal(tmp_path, monkeypatch):
    stream = io.StringIO()
    path = tmp_path / "a.json"
    board, ticks = ProgressBoard(queued=3, workers=2, stream=stream, interval=0.2), Ticks()
    monkeypatch.setattr(board, "_stop", ticks)
    with board:
        board.start("listops/esssm/seed0", path)
        board.start("listops/fixed/seed0", tmp_path / "none.json")
        atomic_write_text(path, record(20, 100, 40.0))
        ticks.waiting(1)
        assert stream.getvalue() == ""  # nothing before the first interval has passed
        # one queued run is left; the fixed run has no record yet, so the job ETA is unknown
        first = ("listops/esssm/seed0: epoch 1/1, step 20/100, 0.50 s/step, ETA 40s, val acc 25.00%\n"
                 "listops/fixed/seed0: starting\n"
                 "job: 0 trained, 2 training, 1 queued, ETA ? + test evaluation ?\n")
        ticks.tick()
        assert stream.getvalue() == first
        ticks.tick()
        assert stream.getvalue() == 2 * first
        board.finish("listops/fixed/seed0", ok=True)
        trained = f"listops/fixed/seed0: trained in {duration(board.durations[0])}\n"
        assert stream.getvalue() == 2 * first + trained
        ticks.tick()
        # the running run's 40 s, then one wave for the queued run at the mean run time seen so far
        eta = 40.0 + (board.durations[0] + 10.0 + 40.0) / 2
        last = ("listops/esssm/seed0: epoch 1/1, step 20/100, 0.50 s/step, ETA 40s, val acc 25.00%\n"
                f"job: 1 trained, 1 training, 1 queued, ETA {duration(eta)} + test evaluation ?\n")
        assert stream.getvalue() == 2 * first + trained + last
    assert ticks.timeouts == [0.2] * 4  # every wait is one interval; none after the board stops
    assert stream.getvalue() == 2 * first + trained + last


def test_board_redraws_in_place_on_a_terminal(tmp_path):
    stream = Terminal()
    path = tmp_path / "a.json"
    atomic_write_text(path, record(30, 60, 15.0))
    with ProgressBoard(queued=1, workers=1, stream=stream) as board:
        board.start("lm/esssm/seed1", path)
        board.draw()
        board.say("a status line")
    out = stream.getvalue()
    assert "\r" in out and "lm/esssm/seed1: epoch 1/1, step 30/60" in out and "a status line\n" in out


def test_duration():
    assert [duration(s) for s in (None, 7, 65, 3725)] == ["?", "7s", "1m05s", "1h02m"]


def test_job_eta_includes_the_test_evaluation(tmp_path):
    board = ProgressBoard(queued=1, workers=1, stream=io.StringIO())
    running = {**json.loads(record(20, 100, 40.0)), "val_s": 2.0, "sweep_s": None, "test_budgets": 16}
    # no sweep yet: 16 budgets at the full-budget pass's 2 s each; the queued run guessed alike
    assert board.eta_text({"a": running}).endswith("(test evaluation 1m04s of it)")
    assert board.eta_text({"a": {**running, "sweep_s": 10.0}}) == f"{duration(40 + 50 + 20)} (test evaluation 20s of it)"
    assert remaining_evaluation([None, 5.0], []) is None and remaining_evaluation([None, 5.0], [3.0]) == 8.0


def test_phase_progress_prints_plain_lines_with_an_eta():
    stream = io.StringIO()
    with PhaseProgress("cascade", 4, "policies", stream, interval=0) as progress:
        progress.advance()
        progress.say("a line")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("cascade: 0/4 policies, 0s elapsed, ETA ?")
    assert lines[1].startswith("cascade: 1/4 policies, ") and "ETA " in lines[1] and "ETA ?" not in lines[1]
    assert lines[2:] == ["a line", "cascade: 1 policies in 0s"]
    guessed = io.StringIO()
    PhaseProgress("sweep", 3, "batches", guessed, expected_s=90.0).close()
    assert "ETA 1m30s" in guessed.getvalue()  # the guess, before the first unit


def test_sweep_reports_progress_per_batch_and_lightning_banners_are_gone(capfd):
    quiet_banners()
    L.seed_everything(0)
    task = SequenceModule(ESSSM(d_model=16, n_layers=1, seq_len=24, k_max=4), num_classes=3, vocab_size=8)
    stream = io.StringIO()
    run_sweep(task, ToyDataModule(train_size=16, val_size=21, batch_size=8), "all", split="val",
              accelerator="cpu", progress="[toy] ", stream=stream)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[toy] val sweep at 4 budgets: 0/3 batches, 0s elapsed, ETA ?"
    assert lines[-1].startswith("[toy] val sweep at 4 budgets: 3 batches in ")
    err = capfd.readouterr().err
    assert "GPU available" not in err and "TPU available" not in err and "Tip:" not in err
    assert "LeafSpec" not in err
