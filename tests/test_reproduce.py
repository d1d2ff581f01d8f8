"""./reproduce.sh --quick end to end on a tiny setting: generate, train two seeds, sweep, tables
(mean ± std), live progress lines, rerun."""

import csv
import json
import re
from pathlib import Path

import pytest

from esssm.lab import reproduce, reproduce_cli

BUDGETS = [1, 4, 16]  # a few budgets of k_max=16 keep the test short; the default is all 16
TINY = ["--quick", "--data-size", "48", "--budgets", "1,4,16", "--",
        "--trainer.max_steps=3", "--trainer.max_epochs=1", "--sweep.val_budgets=[1,4,16]", "--sweep.test_budgets=[1,4,16]"]


@pytest.mark.e2e
def test_quick_pipeline_end_to_end_and_rerun_skips(tmp_path, capsys):
    argv = ["--out", str(tmp_path), "--jobs", "2", "--seeds", "0,1", "--progress-every", "0.5", *TINY]
    assert reproduce_cli.main(argv) == 0  # six runs, two side by side
    out = capsys.readouterr().out
    results = tmp_path / "results"
    tables = (results / "tables.md").read_text()
    assert "Table A" in tables and "Table B" in tables and tables in out  # the tables are printed too
    rows_a = list(csv.DictReader(open(results / "table_a.csv")))
    assert {r["model"] for r in rows_a} == {"esssm", "fixed", "transformer"}
    rows_b = list(csv.DictReader(open(results / "table_b.csv")))
    assert [int(r["budget"]) for r in rows_b] == BUDGETS
    assert all(r["fixed_acc"] != "" and float(r["latency_ms"]) > 0 for r in rows_b)
    assert int(rows_b[0]["active_params"]) < int(rows_b[-1]["active_params"])
    assert (results / "budget_curve_listops.png").stat().st_size > 0
    seeds = [json.loads((results / "listops" / "esssm" / f"seed{s}.json").read_text()) for s in (0, 1)]
    assert seeds[0]["rows"][0]["count"] == 32  # the generated test split, each example once
    # Mean ± sample std over the two seeds, n = 2, in the CSV and the markdown.
    accs = [s["rows"][-1]["acc"] for s in seeds]
    row = next(r for r in rows_a if r["model"] == "esssm")
    assert row["n"] == "2" and float(row["acc_full"]) == pytest.approx(sum(accs) / 2)
    assert float(row["acc_full_std"]) == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    assert re.search(r"\| listops \| esssm \| 2 \| [\d.]+M \| [\d.]+ ± [\d.]+ \|", tables)
    assert seeds[0]["seed"] == 0 and seeds[1]["seed"] == 1
    for model in ("esssm", "fixed", "transformer"):  # runs log to files; the terminal gets progress lines
        for seed in (0, 1):
            run = tmp_path / "runs" / "listops" / model / f"seed{seed}"
            assert (run / "checkpoints" / "finished.json").exists() and "Epoch 0" in (run / "fit.log").read_text()
            assert re.search(rf"listops/{model}/seed{seed}: trained in [\dhms]+, 2 steps, [\d.]+ s/step, val acc", out)
    # Not a terminal: periodic plain lines, one per run, and a whole-job line.
    assert re.search(r"listops/\w+/seed\d: epoch 1/1, step \d/2, ", out)
    assert re.search(r"job: \d trained, \d training, \d queued, ETA ", out)
    assert "\r" not in out and "\x1b" not in out
    assert "tensorboard --logdir" in out
    # The test evaluation has progress too: the job's remaining ETA per run, a line per sweep.
    assert [int(n) for n in re.findall(r"\] test evaluation (\d)/6, job ETA ", out)] == list(range(1, 7))
    assert re.search(r"\[listops/esssm/seed1\] test sweep at 3 budgets: \d+ batches in \d+s", out)
    # Short lines: run name and log path; the full command is in the run's fit.log.
    assert "[listops/fixed/seed0] training on 1 CPU thread(s), output in " in out and "--config" not in out
    log = (tmp_path / "runs" / "listops" / "fixed" / "seed0" / "fit.log").read_text()
    assert log.startswith("$ ") and "-m esssm fit --config" in log.splitlines()[0]
    assert "GPU available" not in log + out and "Tip:" not in log + out

    assert reproduce_cli.main(["--out", str(tmp_path), "--jobs", "1", "--seeds", "0,1", *TINY]) == 0  # rerun
    assert capsys.readouterr().out.count("finished earlier") == 6


def test_bad_seeds_are_refused():
    for text in ("a", "0,0", "-1", ""):
        with pytest.raises(SystemExit, match="--seeds"):
            reproduce.parse_seeds(text)


def earlier_tables(out) -> Path:
    tables = out / "results" / "tables.md"
    tables.parent.mkdir(parents=True)
    tables.write_text("earlier tables\n")
    return tables


def test_missing_data_is_reported_and_skipped(tmp_path, capsys, monkeypatch):
    """With every task skipped there is nothing to tabulate: the job fails and keeps the old tables."""
    monkeypatch.setenv("ESSSM_DATA", str(tmp_path / "nowhere"))
    tables = earlier_tables(tmp_path)
    assert reproduce_cli.main(["--full", "--tasks", "text", "--models", "esssm", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "[text] SKIPPED, data missing" in out and "aclImdb" in out
    assert f"tables NOT written: no table has a row (runs evaluated: none); {tables}" in out
    assert tables.read_text() == "earlier tables\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--tasks", "nosuch"], r"--tasks: no nosuch in .*conf/quick/; choose from listops,lm"),
     (["--models", "esssm,nosuch"], r"--models: no nosuch in the configs of listops; choose from esssm,"),
     (["--tasks", ""], r"--tasks is empty"),
     (["--models", "esssm,esssm"], r"--models names a value twice"),
     (["--budgets", "99"], r"--budgets: budgets \[99\] are outside 1\.\.k_max=16 of .*conf/quick/listops/esssm\.yaml"),
     (["--seeds", "0,0"], r"--seeds takes distinct"),
     (["--smoke", "--models", "nosuch"], r"--models: no nosuch")],
)
def test_bad_selections_stop_before_anything_trains_or_is_written(tmp_path, args, message):
    tables = earlier_tables(tmp_path)
    with pytest.raises(SystemExit, match=message):
        reproduce_cli.main(["--out", str(tmp_path), "--data-size", "48", *args])
    assert [p.name for p in tmp_path.iterdir()] == ["results"] and tables.read_text() == "earlier tables\n"


def test_a_budget_that_is_not_an_integer_is_an_argument_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        reproduce_cli.main(["--out", str(tmp_path), "--budgets", "2.5"])
    assert stop.value.code == 2
    assert "argument --budgets: expected 'all', 'paper' or distinct budgets >= 1" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_paper_budgets_reach_the_tables(tmp_path, monkeypatch):
    """--budgets paper (offered by its help) sweeps the paper's grid up to k_max, plus 1 and k_max.
    Training and evaluation are stubbed: this checks the option's way to the tables."""
    from esssm.budget import sweep_budgets

    def evaluated(run, overrides, budgets, reference_budgets=None):
        k_max = reproduce.config_k_max(run.config)
        rows = [{"budget": "full" if k is None else k, "acc": 0.5, "loss": 1.0, "active_params": 10, "latency_ms": 1.0}
                for k in sweep_budgets(k_max, budgets)]
        return {"task": run.task, "model": run.model, "seed": run.seed, "params": 100, "k_max": k_max,
                "batch_size": 2, "rows": rows}

    monkeypatch.setattr(reproduce, "train_all", lambda plans, *args: {run for run, _ in plans})
    monkeypatch.setattr(reproduce, "load_or_evaluate", evaluated)
    assert reproduce_cli.main(["--out", str(tmp_path), "--data-size", "48", "--budgets", "paper"]) == 0
    rows_b = list(csv.DictReader(open(tmp_path / "results" / "table_b.csv")))
    assert [int(r["budget"]) for r in rows_b] == [1, 2, 3, 4, 6, 8, 12, 16]


def test_failed_side_by_side_runs_show_their_log_and_fail(tmp_path, capsys):
    tables = earlier_tables(tmp_path)
    argv = ["--out", str(tmp_path), "--models", "esssm,fixed", "--jobs", "2", *TINY, "--trainer.no_such_option=1"]
    assert reproduce_cli.main(argv) == 1
    out = capsys.readouterr().out
    assert out.count("training FAILED") == 2 and "no_such_option" in out  # the log's tail is printed
    assert "FAILED runs (rerun to resume): listops/esssm/seed0, listops/fixed/seed0" in out
    assert "tables NOT written" in out and tables.read_text() == "earlier tables\n"  # not replaced by an empty one


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
