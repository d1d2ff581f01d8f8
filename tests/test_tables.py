"""Reproduction tables and curves from per-seed results: the ablation table (accuracy or bits per
byte at every budget, mean ± std), language models plotted in bits per byte."""

import csv

import pytest

from esssm.tables import NoResultsError, render_tables, write_curves, write_tables


def result(task: str, model: str, seed: int, scores: dict, lm: bool = False, k_max: int | None = 4) -> dict:
    """One evaluated run as reproduce.py stores it; `scores` maps budget -> accuracy or bpb."""
    rows = []
    for budget, score in scores.items():
        row = {"budget": budget, "acc": 0.5 if lm else score, "loss": 1.0, "active_params": 100,
               "latency_ms": 1.0}
        rows.append({**row, "bpb": score} if lm else row)
    return {"task": task, "model": model, "seed": seed, "params": 1000, "k_max": k_max, "batch_size": 2,
            "rows": rows}


def two_seeds(task: str, model: str, base: float, lm: bool = False) -> list[dict]:
    return [result(task, model, s, {1: base + s / 10, 2: base + 0.2 + s / 10, "full": base + 0.2 + s / 10}, lm)
            for s in (0, 1)]


ABLATION_RESULTS = {
    **{("listops", m): two_seeds("listops", m, b) for m, b in
       (("esssm", 0.3), ("esssm_sum", 0.35), ("esssm_nogate", 0.25), ("fixed", 0.1))},
    **{("lm", m): two_seeds("lm", m, b, lm=True) for m, b in (("esssm", 3.0), ("esssm_sum", 2.8), ("fixed", 3.5))},
    ("lm", "transformer"): [result("lm", "transformer", 0, {"full": 2.5}, lm=True, k_max=None)],
}


def test_ablation_table_gives_every_variant_at_every_budget(tmp_path):
    write_tables(ABLATION_RESULTS, tmp_path, "quick")
    rows = list(csv.DictReader(open(tmp_path / "table_c.csv")))
    listops = {(r["variant"], int(r["budget"])): r for r in rows if r["task"] == "listops"}
    assert set(listops) == {(v, k) for v in ("esssm", "esssm_sum", "esssm_nogate", "fixed") for k in (1, 2)}
    assert float(listops["esssm_sum", 1]["mean"]) == pytest.approx(0.4)  # (0.35 + 0.45) / 2
    assert float(listops["esssm_sum", 1]["std"]) == pytest.approx(0.1 / 2 ** 0.5)
    lm = [r for r in rows if r["task"] == "lm"]
    assert {r["metric"] for r in lm} == {"bpb"} and {r["variant"] for r in lm} == {"esssm", "esssm_sum", "fixed"}
    markdown = (tmp_path / "tables.md").read_text()
    assert "| k | ES-SSM | elastic plain sum | no gate (1/k) | fixed-budget sum |" in markdown
    assert "| 1 | 35.00 ± 7.07 | 40.00 ± 7.07 |" in markdown  # accuracy in percent
    assert "| 1 | 3.050 ± 0.071 | 2.850 ± 0.071 | 3.550 ± 0.071 |" in markdown  # bits per byte


def test_language_model_table_keeps_ablations_out_and_the_transformer_in():
    markdown, csvs = render_tables(ABLATION_RESULTS, "quick")
    assert {r["model"] for r in csvs["table_d"]} == {"esssm", "fixed", "transformer"}
    assert {r["model"] for r in csvs["table_a"]} == {"esssm", "fixed"}  # ablation-only variants: Table C


def test_language_model_curve_is_drawn_in_bits_per_byte(tmp_path, monkeypatch):
    import esssm.callbacks as callbacks

    figures = {}
    plot = callbacks.plot_budget_curve

    def spy(curves, title, references, metric):
        figures[title] = plot(curves, title, references, metric)
        return figures[title]

    monkeypatch.setattr(callbacks, "plot_budget_curve", spy)
    paths = write_curves(ABLATION_RESULTS, tmp_path)
    assert sorted(p.name for p in paths) == ["budget_curve_listops.png", "budget_curve_lm.png"]
    by_k, _ = figures["lm: test bits per byte vs budget"].axes
    assert by_k.get_ylabel() == "bits per byte (lower is better)"
    esssm_line = next(line for line in by_k.lines if line.get_label().startswith("esssm ("))
    assert list(esssm_line.get_ydata()) == pytest.approx([3.05, 3.25])  # bpb, not next-byte accuracy
    level = next(line for line in by_k.lines if line.get_label().startswith("transformer"))
    assert list(level.get_ydata()) == [2.5, 2.5]
    assert figures["listops: test accuracy vs budget"].axes[0].get_ylabel() == "accuracy"


def test_no_rows_never_replace_earlier_tables(tmp_path):
    (tmp_path / "tables.md").write_text("earlier tables\n")
    only_ablation = {("listops", "esssm_sum"): two_seeds("listops", "esssm_sum", 0.3)}  # in no table alone
    for results in ({}, only_ablation):
        with pytest.raises(NoResultsError, match=f"no table has a row .*{tmp_path / 'tables.md'} and its CSVs"):
            write_tables(results, tmp_path, "quick")
    assert (tmp_path / "tables.md").read_text() == "earlier tables\n" and not list(tmp_path.glob("*.csv"))
