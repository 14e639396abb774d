"""The scaling plot: throughput and parallel efficiency against ranks, with the ideal line and any predictions."""
from __future__ import annotations

from typing import Sequence


def plot_scaling(rows: Sequence[dict], mode: str, path: str, title: str | None = None) -> None:
    """Save a two-panel PNG of `rows` (from `scale.scaling_rows`) to `path`.

    Left: samples/s against ranks (measured, ideal linear scaling from the fewest measured ranks,
    and predicted where present). Right: parallel efficiency (ideal = 1).

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


def _plot_throughput(axes, measured: list[dict], predicted: list[dict], mode: str) -> None:
    if measured:
        base = measured[0]
        ranks = sorted({row["ranks"] for row in measured + predicted})
        axes.plot(ranks, [base["samples_per_s"] * r / base["ranks"] for r in ranks], "k--", label="ideal")
        axes.plot([row["ranks"] for row in measured], [row["samples_per_s"] for row in measured], "o-",
                  color="tab:blue", label="measured")
    if predicted:
        axes.plot([row["ranks"] for row in predicted], [row["predicted_samples_per_s"] for row in predicted], "x:",
                  color="tab:orange", label="predicted")
    axes.set_ylabel("samples / s")
    axes.set_title("throughput (" + ("fixed global batch" if mode == "strong" else "fixed batch per rank") + ")")


def _plot_efficiency(axes, measured: list[dict], predicted: list[dict]) -> None:
    ranks = sorted({row["ranks"] for row in measured + predicted})
    axes.plot(ranks, [1.0] * len(ranks), "k--", label="ideal")
    if measured:
        axes.plot([row["ranks"] for row in measured], [row["efficiency"] for row in measured], "o-",
                  color="tab:blue", label="measured")
    if predicted:
        axes.plot([row["ranks"] for row in predicted], [row["predicted_efficiency"] for row in predicted], "x:",
                  color="tab:orange", label="predicted")
    efficiencies = [row["efficiency"] for row in measured] + [row["predicted_efficiency"] for row in predicted]
    axes.set_ylim(0, max([1.1, *[value * 1.05 for value in efficiencies]]))
    axes.set_ylabel("parallel efficiency")
    axes.set_title("efficiency = speedup / (ranks / base ranks)")
