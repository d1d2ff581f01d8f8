"""The budget sweep gives the same numbers on 1 and 2 CPU processes (DDP, gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "ddp_sweep_script.py"


def run(devices: int, out: Path, mode: str = "validate") -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(devices), str(out), mode], env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.e2e
def test_two_process_sweep_matches_one_process(tmp_path):
    single = run(1, tmp_path / "one.json")
    double = run(2, tmp_path / "two.json")
    assert single["world"] == 1 and double["world"] == 2
    assert [r["count"] for r in double["rows"]] == [61, 61, 61]  # DDP padding not double counted
    for one, two in zip(single["rows"], double["rows"]):
        assert one["budget"] == two["budget"] and one["acc"] == two["acc"]  # exact
        assert abs(one["loss"] - two["loss"]) < 1e-6  # batches differ: float summation order only
    assert double["val_acc"] == single["val_acc"] == single["rows"][-1]["acc"]


@pytest.mark.e2e
def test_the_sweep_at_the_end_of_a_stopped_fit_gathers_every_rank(tmp_path):
    """A fit stopped by max_steps before its scheduled sweep sweeps at its end, outside Lightning's
    validation loop: each rank evaluates its shard and the rows are gathered, as in validation."""
    single = run(1, tmp_path / "one.json", "fit")
    double = run(2, tmp_path / "two.json", "fit")
    assert single["step"] == double["step"] == 3 and double["world"] == 2
    assert [r["count"] for r in double["rows"]] == [61, 61, 61]
    for one, two in zip(single["rows"], double["rows"]):
        assert one["budget"] == two["budget"] and one["acc"] == two["acc"]
        assert abs(one["loss"] - two["loss"]) < 1e-6
