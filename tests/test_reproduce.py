"""./reproduce.sh --quick end to end on a tiny setting: generate, train, sweep, tables, rerun."""

import csv
import json

import pytest

from esssm import reproduce

BUDGETS = [1, 4, 16]  # a few budgets of k_max=16 keep the test short; the default is all 16
TINY = ["--quick", "--data-size", "48", "--budgets", "1,4,16", "--",
        "--trainer.max_steps=3", "--trainer.max_epochs=1", "--sweep.budgets=[1,4,16]"]


def test_quick_pipeline_end_to_end_and_rerun_skips(tmp_path, capsys):
    assert reproduce.main(["--out", str(tmp_path), "--jobs", "2", *TINY]) == 0  # two runs side by side
    results = tmp_path / "results"
    tables = (results / "tables.md").read_text()
    assert "Table A" in tables and "Table B" in tables
    rows_a = list(csv.DictReader(open(results / "table_a.csv")))
    assert {r["model"] for r in rows_a} == {"esssm", "fixed", "transformer"}
    rows_b = list(csv.DictReader(open(results / "table_b.csv")))
    assert [int(r["budget"]) for r in rows_b] == BUDGETS
    assert all(r["fixed_acc"] != "" and float(r["latency_ms"]) > 0 for r in rows_b)
    assert int(rows_b[0]["active_params"]) < int(rows_b[-1]["active_params"])
    assert (results / "budget_curve_listops.png").stat().st_size > 0
    result = json.loads((results / "listops" / "esssm.json").read_text())
    assert result["rows"][0]["count"] == 32  # the generated test split, each example once
    assert (tmp_path / "runs" / "listops" / "esssm" / "run" / "checkpoints" / "finished.json").exists()
    assert "tensorboard --logdir" in capsys.readouterr().out
    for model in ("esssm", "fixed", "transformer"):  # side-by-side runs log to files, not the terminal
        assert "Epoch 0" in (tmp_path / "runs" / "listops" / model / "run" / "fit.log").read_text()

    assert reproduce.main(["--out", str(tmp_path), "--jobs", "1", *TINY]) == 0  # rerun: nothing retrained
    assert capsys.readouterr().out.count("finished earlier") == 3


def test_missing_data_is_reported_and_skipped(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ESSSM_DATA", str(tmp_path / "nowhere"))
    assert reproduce.main(["--full", "--tasks", "text", "--models", "esssm", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[text] SKIPPED, data missing" in out and "aclImdb" in out


def test_failed_side_by_side_runs_show_their_log_and_fail(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--models", "esssm,fixed", "--jobs", "2", *TINY, "--trainer.no_such_option=1"]
    assert reproduce.main(argv) == 1
    out = capsys.readouterr().out
    assert out.count("training FAILED") == 2 and "no_such_option" in out  # the log's tail is printed
    assert "FAILED runs (rerun to resume): listops/esssm, listops/fixed" in out


@pytest.mark.parametrize(
    "jobs,pending,cuda,expected",
    [(None, 3, False, (3, 1)), (None, 9, False, (4, 1)), (None, 1, False, (1, None)), (None, 0, False, (1, None)),
     (None, 3, True, (1, None)), (1, 3, False, (1, None)), (2, 3, True, (2, 1))],
)
def test_parallel_plan_shares_the_cores(monkeypatch, jobs, pending, cuda, expected):
    monkeypatch.setattr(reproduce.os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    monkeypatch.setattr(reproduce.torch.cuda, "is_available", lambda: cuda)
    assert reproduce.parallel_plan(jobs, pending) == expected


def test_parallel_plan_rejects_zero_jobs():
    with pytest.raises(ValueError, match="--jobs must be >= 1"):
        reproduce.parallel_plan(0, 3)
