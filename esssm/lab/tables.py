"""The reproduction's tables (markdown + CSV) and budget-curve PNGs, over one or more seeds.

`results` maps (task, model) to the list of per-seed test results that `./reproduce.sh` wrote
(one dict per seed: rows of budget, acc, loss, [bpb], active_params, latency_ms). Every number
is reported as the mean over seeds with its sample standard deviation and the number of seeds n.
"""

from __future__ import annotations

import io
import statistics
from pathlib import Path
from typing import Any

from esssm.budget import curve_summary
from esssm.files import atomic_write_bytes, atomic_write_csv, atomic_write_text
from esssm.timing import NOISY_SPREAD

Results = dict[tuple[str, str], list[dict[str, Any]]]
ABLATIONS = {  # Table C columns: config name -> label
    "esssm": "ES-SSM",
    "esssm_sum": "elastic plain sum",
    "esssm_nogate": "no gate (1/k)",
    "esssm_norms": "no RMS rescale",
    "esssm_nodropout": "no budget dropout",
    "fixed": "fixed-budget sum",
}
ABLATION_ONLY = ("esssm_sum", "esssm_nogate", "esssm_norms", "esssm_nodropout")  # not in Tables A, B
ROW_METRICS = ("acc", "loss", "bpb", "latency_ms")


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def merge_seeds(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """One result for several seeds of a run: each row's metrics become their mean, with
    `<metric>_std` beside them; `n` is the number of seeds."""
    budgets = [[r["budget"] for r in s["rows"]] for s in seeds]
    if any(b != budgets[0] for b in budgets):
        raise ValueError(f"{seeds[0]['task']}/{seeds[0]['model']}: the seeds were swept at different "
                         f"budgets {budgets}; rerun the evaluation with one --budgets for all seeds")
    rows = []
    for i, row in enumerate(seeds[0]["rows"]):
        merged = {"budget": row["budget"], "active_params": row["active_params"]}
        for key in (k for k in ROW_METRICS if k in row):
            merged[key], merged[f"{key}_std"] = mean_std([s["rows"][i][key] for s in seeds])
        spreads = [s["rows"][i]["latency_spread"] for s in seeds if "latency_spread" in s["rows"][i]]
        if spreads:  # the least consistent seed's timing rounds
            merged["latency_spread"] = max(spreads)
        rows.append(merged)
    return {**seeds[0], "rows": rows, "n": len(seeds), "seeds": [s.get("seed", 0) for s in seeds]}


def classification(results: Results) -> Results:
    """The runs scored by accuracy (language models are scored in bits per byte: Table D)."""
    return {key: r for key, r in results.items() if "bpb" not in r[0]["rows"][0]}


def full_row(result: dict[str, Any]) -> dict[str, Any]:
    return max(result["rows"], key=lambda r: -1 if r["budget"] == "full" else r["budget"])


def elastic_summary(result: dict[str, Any]) -> dict[str, Any]:
    """Full-budget accuracy, smallest budget reaching 98% of it, and the area under the curve."""
    rows = [r for r in result["rows"] if r["budget"] != "full"]
    if not rows:
        return {"full": full_row(result)["acc"], "k98": None, "auc": None}
    return curve_summary([r["budget"] for r in rows], [r["acc"] for r in rows])


def row_at(result: dict[str, Any], budget: Any) -> dict[str, Any] | None:
    return next((r for r in result["rows"] if r["budget"] == budget), None)


def number(x: float | None, std: float | None = None, scale: float = 1.0, digits: int = 3) -> str:
    """'2.310', or '2.310 ± 0.021' with a standard deviation; '-' when missing."""
    if x is None:
        return "-"
    text = f"{scale * x:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def pct(x: float | None, std: float | None = None) -> str:
    """A fraction in percent: '61.20' or '61.20 ± 1.30'."""
    return number(x, std, scale=100, digits=2)


def noisy(row: dict[str, Any]) -> bool:
    """Whether the repeated timings behind a row's latency disagreed (another process's load)."""
    return row.get("latency_spread", 0.0) > NOISY_SPREAD


def latency(row: dict[str, Any]) -> str:
    """'12.3', or '12.3 (noisy)' when its timing rounds disagreed."""
    return f"{row['latency_ms']:.1f}" + (" (noisy)" if noisy(row) else "")


NOISE_NOTE = (f"\n(noisy): the timing rounds of that latency spread by more than {NOISY_SPREAD:.0%} of their "
              "median (other processes were using the machine); compare latencies measured on an idle machine.")


def markdown_table(columns: list[str], cells: list[list[Any]], text_columns: int) -> str:
    """A markdown table; the first `text_columns` columns are left-aligned, the rest right-aligned."""
    align = ["---"] * text_columns + ["---:"] * (len(columns) - text_columns)
    lines = [columns, align, *([str(c) for c in row] for row in cells)]
    return "\n".join(f"| {' | '.join(line)} |" for line in lines)


def table_a(results: Results) -> tuple[str, list[dict]]:
    """Accuracy of every model on every task (elastic models also at their 98% budget, read from
    the mean curve)."""
    rows = []
    for (task, model), seeds in sorted(classification(results).items()):
        if model in ABLATION_ONLY:
            continue
        merged = merge_seeds(seeds)
        full = full_row(merged)
        k98 = elastic_summary(merged)["k98"]
        at_k98 = row_at(merged, k98) or {}
        rows.append({"task": task, "model": model, "n": merged["n"], "params": merged["params"],
                     "acc_full": full["acc"], "acc_full_std": full["acc_std"], "k98": k98,
                     "acc_at_k98": at_k98.get("acc"), "acc_at_k98_std": at_k98.get("acc_std")})
    columns = ["task", "model", "n", "params", "test acc (full)", "smallest k with >= 98%", "acc at that k"]
    cells = [[r["task"], r["model"], r["n"], f"{r['params'] / 1e6:.2f}M", pct(r["acc_full"], r["acc_full_std"]),
              "-" if r["k98"] is None else r["k98"], pct(r["acc_at_k98"], r["acc_at_k98_std"])] for r in rows]
    return markdown_table(columns, cells, 2), rows


def table_b(results: Results) -> tuple[str, list[dict]]:
    """ES-SSM per budget (fixed-budget spectral SSM beside it), active params, latency."""
    rows, lines = [], []
    results = classification(results)
    for task in sorted({t for t, _ in results}):
        if (task, "esssm") not in results:
            continue
        elastic = merge_seeds(results[task, "esssm"])
        fixed = merge_seeds(results[task, "fixed"]) if (task, "fixed") in results else None
        cells = []
        for r in elastic["rows"]:
            f = (fixed and row_at(fixed, r["budget"])) or {}
            row = {"task": task, "budget": r["budget"], "n": elastic["n"], "esssm_acc": r["acc"],
                   "esssm_acc_std": r["acc_std"], "fixed_acc": f.get("acc"), "fixed_acc_std": f.get("acc_std"),
                   "active_params": r["active_params"], "latency_ms": round(r["latency_ms"], 3),
                   "latency_noisy": noisy(r)}
            rows.append(row)
            cells.append([r["budget"], pct(r["acc"], r["acc_std"]), pct(row["fixed_acc"], row["fixed_acc_std"]),
                          f"{r['active_params']:,}", latency(r)])
        lines += [f"\n**{task}** (n = {elastic['n']} seed(s) ES-SSM, {fixed['n'] if fixed else 0} fixed; "
                  f"batch {elastic['batch_size']}, latency = median forward ms on this machine over interleaved "
                  "rounds, timed after the sweep)\n",
                  markdown_table(["k", "ES-SSM acc", "fixed-budget SSM acc", "active params", "latency ms"], cells, 0)]
        if any(noisy(r) for r in elastic["rows"]):
            lines.append(NOISE_NOTE)
    return "\n".join(lines), rows


def table_c(results: Results) -> tuple[str, list[dict]]:
    """Ablations, per task: the score of every variant at every budget (accuracy, or bits per
    byte for a language model), mean ± std over seeds. Only tasks where an ablation-only variant
    ran beside another variant: ES-SSM against the fixed-budget sum alone is Table B."""
    from esssm.plots import METRIC_LABELS, curve_metric

    sections, rows = [], []
    for task in sorted({t for t, _ in results}):
        variants = {m: merge_seeds(results[task, m]) for m in ABLATIONS if (task, m) in results}
        if len(variants) < 2 or not any(m in variants for m in ABLATION_ONLY):
            continue
        metric = curve_metric(next(iter(variants.values()))["rows"])
        show = pct if metric == "acc" else number
        budgets = sorted({r["budget"] for v in variants.values() for r in v["rows"] if r["budget"] != "full"})
        cells = []
        for k in budgets:
            at = {m: row_at(v, k) for m, v in variants.items()}
            cells.append([k, *(show(r[metric], r[f"{metric}_std"]) if r else "-" for r in at.values())])
            rows += [{"task": task, "variant": m, "budget": k, "n": variants[m]["n"], "metric": metric,
                      "mean": r[metric], "std": r[f"{metric}_std"]} for m, r in at.items() if r]
        n = ", ".join(f"{ABLATIONS[m]} {v['n']}" for m, v in variants.items())
        sections += [f"{task}: test {METRIC_LABELS[metric]} at every budget k (seeds: {n})\n",
                     markdown_table(["k", *(ABLATIONS[m] for m in variants)], cells, 0), ""]
    return "\n".join(sections), rows


def table_d(results: Results) -> tuple[str, list[dict]]:
    """Byte-level language models: test bits per byte at every budget."""
    rows, cells = [], []
    for (task, model), seeds in sorted(results.items()):
        if model in ABLATION_ONLY:  # Table C
            continue
        merged = merge_seeds(seeds)
        for r in (r for r in merged["rows"] if "bpb" in r):
            rows.append({"task": task, "model": model, "budget": r["budget"], "n": merged["n"], "bpb": r["bpb"],
                         "bpb_std": r["bpb_std"], "token_acc": r["acc"], "token_acc_std": r["acc_std"],
                         "active_params": r["active_params"], "latency_ms": round(r["latency_ms"], 3),
                         "latency_noisy": noisy(r)})
            cells.append([task, model, r["budget"], merged["n"], number(r["bpb"], r["bpb_std"]),
                          pct(r["acc"], r["acc_std"]), f"{r['active_params']:,}", latency(r)])
    columns = ["task", "model", "k", "n", "bits per byte", "next-byte acc", "active params", "latency ms"]
    note = NOISE_NOTE if any(r["latency_noisy"] for r in rows) else ""
    return markdown_table(columns, cells, 2) + note, rows


TABLES = (("table_a", table_a, "Table A: accuracy per model and task"),
          ("table_b", table_b, "Table B: accuracy per spectral budget"),
          ("table_c", table_c, "Table C: ablations"),
          ("table_d", table_d, "Table D: byte-level language modelling"))


def render_tables(results: Results, profile: str) -> tuple[str, dict[str, list[dict]]]:
    """(the markdown of every table that has rows, {table name: its CSV rows})."""
    seeds = sorted({s.get("seed", 0) for runs in results.values() for s in runs})
    sections = [f"# ES-SSM reproduction ({profile} profile)\n",
                "Test-split accuracy (%), mean ± sample standard deviation over n seeds "
                f"(seeds {', '.join(map(str, seeds))}). Written by `./reproduce.sh`; raw numbers in the CSV files.\n"]
    csvs = {}
    for name, build, title in TABLES:
        text, rows = build(results)
        if rows:
            sections += [f"\n## {title}\n", text, ""]
            csvs[name] = rows
    return "\n".join(sections) + "\n", csvs


class NoResultsError(ValueError):
    """There is nothing to tabulate; the tables already on disk are kept."""


def write_tables(results: Results, folder: Path, profile: str) -> tuple[Path, str]:
    """Writes tables.md and table_*.csv; returns the markdown's path and text. Refuses (raises
    NoResultsError, writing nothing) when no table would have a row, so a job that trained and
    evaluated nothing never replaces earlier tables with empty ones."""
    markdown, csvs = render_tables(results, profile)
    if not csvs:
        raise NoResultsError(
            f"no table has a row (runs evaluated: {', '.join('/'.join(key) for key in sorted(results)) or 'none'}); "
            f"{folder / 'tables.md'} and its CSVs are left as they were"
        )
    for name, rows in csvs.items():
        atomic_write_csv(folder / f"{name}.csv", rows)
    path = folder / "tables.md"
    atomic_write_text(path, markdown)
    return path, markdown


def write_curves(results: Results, folder: Path) -> list[Path]:
    """One PNG per task: every elastic model's mean test curve with a ±1 std band (accuracy, or
    bits per byte for a language model), baselines as levels."""
    import matplotlib.pyplot as plt

    from esssm.plots import METRIC_LABELS, curve_metric, plot_budget_curve

    paths = []
    for task in sorted({t for t, _ in results}):
        runs = {m: merge_seeds(r) for (t, m), r in sorted(results.items()) if t == task}
        curves = {f"{m} (n={r['n']})": r["rows"] for m, r in runs.items() if r["k_max"]}
        if not curves:
            continue
        metric = curve_metric(next(iter(curves.values())))
        references = {f"{m} (n={r['n']})": (r["params"], full_row(r)[metric])
                      for m, r in runs.items() if not r["k_max"]}
        title = f"{task}: test {METRIC_LABELS[metric].split(' (')[0]} vs budget"
        figure = plot_budget_curve(curves, title=title, references=references, metric=metric)
        path = folder / f"budget_curve_{task}.png"
        buffer = io.BytesIO()
        figure.savefig(buffer, dpi=120, format="png")
        plt.close(figure)
        atomic_write_bytes(path, buffer.getvalue())
        paths.append(path)
    return paths
