"""The budget-curve figure: a score against the spectral budget k and against the active
parameters, one line per model (the training callback's TensorBoard figure and the tables'
PNG draw the same picture). Plain matplotlib, no Lightning."""

from __future__ import annotations

import math

METRIC_LABELS = {"acc": "accuracy (%)", "bpb": "bits per byte (lower is better)"}
METRIC_SCALES = {"acc": 100.0, "bpb": 1.0}  # accuracy is drawn in percent, as the tables give it


def curve_metric(rows: list[dict]) -> str:
    """What a budget curve plots: bits per byte for a language model, else accuracy."""
    return "bpb" if rows and "bpb" in rows[0] else "acc"


def labelled_budgets(budgets: list[int], min_gap: float = 1 / 14) -> list[int]:
    """The budgets whose tick gets a label on a log-k axis: from the smallest up, each at least
    `min_gap` of the axis's log range past the previous label; the largest always (it replaces
    a label too close to it): 1..32 is labelled 1 2 3 4 6 8 11 15 20 32, not a smear of digits."""
    ks = sorted(set(budgets))
    if len(ks) < 3:
        return ks
    gap = min_gap * (math.log(ks[-1]) - math.log(ks[0]))
    labels = [ks[0]]
    for k in ks[1:-1]:
        if math.log(k) - math.log(labels[-1]) >= gap:
            labels.append(k)
    if math.log(ks[-1]) - math.log(labels[-1]) < gap and len(labels) > 1:
        labels.pop()
    return [*labels, ks[-1]]


def curve_caption(metric: str, bands: bool, references: bool, split: str = "test") -> str:
    """The one-line caption under a budget-curve figure: what each line and axis shows."""
    parts = [f"{split.capitalize()} {METRIC_LABELS[metric].split(' (')[0]} of each model run on only its first k "
             "spectral channels, without retraining"]
    if bands:
        parts.append("band: ±1 std over seeds")
    if references:
        parts.append("dashed: no budget")
    parts.append("right: vs active parameters")
    return "; ".join(parts) + "."


def plot_budget_curve(
    curves: dict[str, list[dict]],
    title: str = "Budget-accuracy curve",
    references: dict[str, tuple[int, float]] | None = None,
    metric: str = "acc",
    split: str = "test",
):
    """`metric` ("acc", drawn in percent, or "bpb") vs budget k and vs active parameters, one line
    per named curve (with a ±1 std band where its rows carry "<metric>_std", e.g. the mean of
    several seeds). references: models without a budget, name -> (parameters, score), drawn as a
    dashed level on the k axis and a star on the parameter axis, so baselines sit on the same
    picture. The k axis is ticked at the measured budgets; a caption says what the curves show."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = METRIC_SCALES[metric]
    figure, (by_k, by_params) = plt.subplots(1, 2, figsize=(10, 4.3))
    bands, budgets = False, set()
    for name, rows in curves.items():
        rows = [r for r in rows if r["budget"] != "full"]
        score = [scale * r[metric] for r in rows]
        budgets |= {r["budget"] for r in rows}
        for axis, x in ((by_k, [r["budget"] for r in rows]), (by_params, [r["active_params"] for r in rows])):
            line, = axis.plot(x, score, marker="o", label=name)
            if rows and rows[0].get(f"{metric}_std") is not None:  # several seeds: mean ± 1 std band
                bands = True
                spread = [scale * r[f"{metric}_std"] for r in rows]
                low, high = [a - s for a, s in zip(score, spread)], [a + s for a, s in zip(score, spread)]
                axis.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    for i, (name, (params, level)) in enumerate((references or {}).items(), start=len(curves)):
        by_k.axhline(scale * level, linestyle="--", color=f"C{i}", label=name)
        by_params.plot([params], [scale * level], marker="*", markersize=12, linestyle="none", color=f"C{i}",
                       label=name)
    by_k.set(xscale="log", xlabel="spectral budget k", ylabel=METRIC_LABELS[metric], title=title)
    if budgets:
        ks, labelled = sorted(budgets), set(labelled_budgets(list(budgets)))
        by_k.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        by_k.set_xticks(ks, [str(k) if k in labelled else "" for k in ks])
    by_params.set(xlabel="active parameters", ylabel=METRIC_LABELS[metric])
    by_params.xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k"))
    for axis in (by_k, by_params):
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.text(0.5, 0.015, curve_caption(metric, bands, bool(references), split), ha="center", fontsize=8)
    figure.tight_layout(rect=(0, 0.05, 1, 1))
    return figure
