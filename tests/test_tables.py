"""Reproduction tables and curves from per-seed results: the ablation table (accuracy or bits per
byte at every budget, mean ± std) only when ablations ran, latencies marked noisy when their
timing rounds disagree, language models plotted in bits per byte, accuracy in percent, the k axis
ticked at the measured budgets, and a caption."""

import csv

import pytest

from esssm.lab.tables import NoResultsError, render_tables, write_curves, write_tables
from esssm.timing import NOISY_SPREAD, interleaved_ms, spread
from esssm.plots import labelled_budgets, plot_budget_curve


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
    import esssm.plots as plots

    figures = {}
    plot = plots.plot_budget_curve

    def spy(curves, title, references, metric):
        figures[title] = plot(curves, title, references, metric)
        return figures[title]

    monkeypatch.setattr(plots, "plot_budget_curve", spy)
    paths = write_curves(ABLATION_RESULTS, tmp_path)
    assert sorted(p.name for p in paths) == ["budget_curve_listops.png", "budget_curve_lm.png"]
    by_k, _ = figures["lm: test bits per byte vs budget"].axes
    assert by_k.get_ylabel() == "bits per byte (lower is better)"
    esssm_line = next(line for line in by_k.lines if line.get_label().startswith("esssm ("))
    assert list(esssm_line.get_ydata()) == pytest.approx([3.05, 3.25])  # bpb, not next-byte accuracy
    level = next(line for line in by_k.lines if line.get_label().startswith("transformer"))
    assert list(level.get_ydata()) == [2.5, 2.5]
    assert figures["listops: test accuracy vs budget"].axes[0].get_ylabel() == "accuracy (%)"


def test_no_rows_never_replace_earlier_tables(tmp_path):
    (tmp_path / "tables.md").write_text("earlier tables\n")
    only_ablation = {("listops", "esssm_sum"): two_seeds("listops", "esssm_sum", 0.3)}  # in no table alone
    for results in ({}, only_ablation):
        with pytest.raises(NoResultsError, match=f"no table has a row .*{tmp_path / 'tables.md'} and its CSVs"):
            write_tables(results, tmp_path, "quick")
    assert (tmp_path / "tables.md").read_text() == "earlier tables\n" and not list(tmp_path.glob("*.csv"))


def test_table_c_only_when_an_ablation_ran():
    """ES-SSM and the fixed-budget sum alone are Table B already; Table C needs an ablation."""
    plain = {key: seeds for key, seeds in ABLATION_RESULTS.items()
             if key[0] == "listops" and key[1] in ("esssm", "fixed")}
    markdown, csvs = render_tables(plain, "quick")
    assert "table_c" not in csvs and "Table C" not in markdown and "Table B" in markdown
    assert "table_c" in render_tables(ABLATION_RESULTS, "quick")[1]


def test_latency_is_marked_noisy_when_its_timing_rounds_disagree():
    results = {("listops", m): two_seeds("listops", m, 0.3) for m in ("esssm", "fixed")}
    quiet, _ = render_tables(results, "quick")
    assert "(noisy)" not in quiet
    results["listops", "esssm"][1]["rows"][0]["latency_spread"] = NOISY_SPREAD + 0.1  # k = 1 of one seed
    markdown, csvs = render_tables(results, "quick")
    assert "| 1 | 35.00 ± 7.07 | 35.00 ± 7.07 | 100 | 1.0 (noisy) |" in markdown
    assert "| 2 | 55.00 ± 7.07 | 55.00 ± 7.07 | 100 | 1.0 |" in markdown
    assert "spread by more than 25% of their median" in markdown
    assert [r["latency_noisy"] for r in csvs["table_b"]] == [True, False, False]


def test_spread_of_interleaved_rounds():
    order = []

    def timer(fn, device):
        order.append(fn())
        return {"a": 10.0, "b": 10.0 + len(order)}[order[-1]]

    times = interleaved_ms({"a": lambda: "a", "b": lambda: "b"}, rounds=3, warmup=1, timer=timer)
    assert order == ["a", "b"] * 4  # every call once per round, the warm-up round untimed
    assert times == {"a": [10.0] * 3, "b": [14.0, 16.0, 18.0]}
    assert spread(times["a"]) == 0.0 and spread(times["b"]) == pytest.approx(4 / 16)


def test_figure_in_percent_with_k_ticks_at_the_measured_budgets_and_a_caption():
    budgets = [1, 2, 3, 4, 6, 8, 12, 16]
    rows = [{"budget": k, "acc": k / 20, "active_params": 10 * k} for k in budgets] + [
        {"budget": "full", "acc": 0.8, "active_params": 160}]
    figure = plot_budget_curve({"esssm": rows}, references={"transformer": (150, 0.5)})
    by_k = figure.axes[0]
    assert list(by_k.lines[0].get_ydata()) == pytest.approx([5 * k for k in budgets])  # percent
    assert list(by_k.lines[-1].get_ydata()) == [50.0, 50.0]  # the reference level, in percent too
    assert list(by_k.get_xticks()) == budgets and not list(by_k.xaxis.get_minorticklocs())
    labels = [t.get_text() for t in by_k.get_xticklabels()]
    assert labels == [str(k) for k in budgets]  # 1..16 on a log axis: every budget has room
    caption = [t.get_text() for t in figure.texts]
    assert len(caption) == 1 and "first k spectral channels" in caption[0] and "dashed: no budget" in caption[0]


def test_crowded_budgets_keep_their_ticks_but_not_every_label():
    labels = labelled_budgets(list(range(1, 33)))
    assert labels[:4] == [1, 2, 3, 4] and labels[-1] == 32 and len(labels) < 16
    assert labelled_budgets([2, 4, 8, 16, 32]) == [2, 4, 8, 16, 32]
