"""The scaling plot: throughput and parallel efficiency against ranks, with the ideal line, predictions and spreads."""
from __future__ import annotations

from typing import Sequence


def plot_scaling(rows: Sequence[dict], mode: str, path: str, title: str | None = None) -> None:
    """Save a two-panel PNG of `rows` (from `scale.scaling_rows`) to `path`.

    Left: samples/s against ranks (measured, ideal linear scaling from the fewest measured ranks,
    and predicted where present). Right: parallel efficiency (ideal = 1). Lines join the medians;
    error bars span the lowest to the highest of the repeated runs, measured just left of each rank
    count and predicted just right of it.

    Raises:
        ImportError: when matplotlib is not installed (`pip install mpiprop[examples]`).
    """
    try:
        import matplotlib
    except ImportError as error:
        raise ImportError("the scaling plot needs matplotlib; install it with `pip install matplotlib`") from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [row for row in rows if row["samples_per_s"] is not None]
    predicted = [row for row in rows if row["predicted_samples_per_s"] is not None]
    figure, (throughput_axes, efficiency_axes) = plt.subplots(1, 2, figsize=(10, 4))
    _plot_throughput(throughput_axes, measured, predicted, mode)
    _plot_efficiency(efficiency_axes, measured, predicted)
    for axes in (throughput_axes, efficiency_axes):
        axes.set_xscale("log", base=2)
        ticks = sorted({row["ranks"] for row in rows})
        axes.set_xticks(ticks, [str(tick) for tick in ticks])
        axes.set_xlabel("MPI ranks")
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.suptitle(title or f"{mode} scaling")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


MEASURED = {"value": "samples_per_s", "low": "samples_per_s_min", "high": "samples_per_s_max",
            "efficiency": "efficiency", "style": "o-", "color": "tab:blue", "label": "measured (median, runs min-max)",
            "shift": 0.97}
PREDICTED = {"value": "predicted_samples_per_s", "low": "predicted_samples_per_s_min",
             "high": "predicted_samples_per_s_max", "efficiency": "predicted_efficiency", "style": "x:",
             "color": "tab:orange", "label": "predicted (median, runs min-max)",
             "shift": 1.03}


def _plot_series(axes, rows: list[dict], series: dict, key: str) -> None:
    """Medians of `key` joined by a line, with error bars from each row's low to high run (scaled alike)."""
    if not rows:
        return
    x = [row["ranks"] * series["shift"] for row in rows]
    medians = [row[key] for row in rows]
    scales = [row[key] / row[series["value"]] if row[series["value"]] else 0.0 for row in rows]
    below = [median - row[series["low"]] * scale for median, row, scale in zip(medians, rows, scales)]
    above = [row[series["high"]] * scale - median for median, row, scale in zip(medians, rows, scales)]
    axes.errorbar(x, medians, yerr=[[max(gap, 0.0) for gap in below], [max(gap, 0.0) for gap in above]],
                  fmt=series["style"], color=series["color"], capsize=3, label=series["label"])


def _plot_throughput(axes, measured: list[dict], predicted: list[dict], mode: str) -> None:
    if measured:
        base = measured[0]
        ranks = sorted({row["ranks"] for row in measured + predicted})
        axes.plot(ranks, [base["samples_per_s"] * r / base["ranks"] for r in ranks], "k--", label="ideal")
    _plot_series(axes, measured, MEASURED, MEASURED["value"])
    _plot_series(axes, predicted, PREDICTED, PREDICTED["value"])
    axes.set_ylabel("samples / s")
    axes.set_title("throughput (" + ("fixed global batch" if mode == "strong" else "fixed batch per rank") + ")")


def _plot_efficiency(axes, measured: list[dict], predicted: list[dict]) -> None:
    ranks = sorted({row["ranks"] for row in measured + predicted})
    axes.plot(ranks, [1.0] * len(ranks), "k--", label="ideal")
    _plot_series(axes, measured, MEASURED, MEASURED["efficiency"])
    _plot_series(axes, predicted, PREDICTED, PREDICTED["efficiency"])
    highest = [row["efficiency"] * row["samples_per_s_max"] / row["samples_per_s"] for row in measured] + \
        [row["predicted_efficiency"] * row["predicted_samples_per_s_max"] / row["predicted_samples_per_s"]
         for row in predicted]
    axes.set_ylim(0, max([1.1, *[value * 1.05 for value in highest]]))
    axes.set_ylabel("parallel efficiency")
    axes.set_title("efficiency = speedup / (ranks / base ranks)")
