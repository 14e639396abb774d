"""PNG figures with matplotlib (an optional dependency): training curves, and images beside their reconstructions."""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy


def plot_history(history: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    """Save loss (and accuracy, when recorded) per epoch, training and validation, as a PNG.

    Args:
        history: the epoch records `Trainer.fit` returns.
        path: the PNG file to write.

    Raises:
        ImportError: when matplotlib is missing.
        ValueError: for an empty history.
    """
    if not history:
        raise ValueError("plot_history got an empty history; train at least one epoch first")
    figure_class = _figure_class()
    epochs = [record["epoch"] for record in history]
    panels = [name for name in ("loss", "accuracy") if name in history[0]]
    figure = figure_class(figsize=(5 * len(panels), 3.6))
    for index, name in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        for key, label in ((name, "train"), ("val_" + name, "validation")):
            if key in history[0]:
                axes.plot(epochs, [record[key] for record in history], marker=".", label=label)
        axes.set_xlabel("epoch")
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=100)


def plot_reconstructions(originals: numpy.ndarray, reconstructions: numpy.ndarray, image_shape: tuple[int, int],
                         path: str | os.PathLike) -> None:
    """Save a PNG with originals in the top row and their reconstructions below.

    Args:
        originals, reconstructions: arrays of shape (n, rows * cols).
        image_shape: (rows, cols) of one image.
        path: the PNG file to write.

    Raises:
        ImportError: when matplotlib is missing.
        ValueError: when the two arrays differ in shape.
    """
    if originals.shape != reconstructions.shape:
        raise ValueError(f"originals {originals.shape} and reconstructions {reconstructions.shape} differ in shape")
    figure_class = _figure_class()
    count = len(originals)
    figure = figure_class(figsize=(1.1 * count, 2.4))
    for row, (images, title) in enumerate(((originals, "original"), (reconstructions, "reconstruction"))):
        for column, image in enumerate(images):
            axes = figure.add_subplot(2, count, row * count + column + 1)
            axes.imshow(numpy.asarray(image).reshape(image_shape), cmap="gray_r")
            axes.set_xticks([])
            axes.set_yticks([])
            if column == 0:
                axes.set_ylabel(title, fontsize=7)
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=100)


def plot_curves(curves: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike, *,
                xlabel: str, ylabel: str, title: str | None = None, dashed: Sequence[str] = ()) -> None:
    """Save several named curves on one set of axes as a small PNG (e.g. two runs' losses per epoch).

    Args:
        curves: label -> (x values, y values), drawn in order.
        path: the PNG file to write.
        xlabel, ylabel: the axis labels.
        title: a title above the axes, if any.
        dashed: labels of the curves drawn dashed (the others are solid).

    Raises:
        ImportError: when matplotlib is missing.
        ValueError: for no curves, or a curve whose x and y differ in length.
    """
    if not curves:
        raise ValueError("plot_curves got no curves; pass {label: (xs, ys)}")
    for label, (xs, ys) in curves.items():
        if len(xs) != len(ys):
            raise ValueError(f"curve {label!r} has {len(xs)} x values but {len(ys)} y values")
    figure = _figure_class()(figsize=(5.5, 3.6))
    axes = figure.add_subplot(1, 1, 1)
    for label, (xs, ys) in curves.items():
        axes.plot(xs, ys, marker=".", label=label, linestyle="--" if label in dashed else "-")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title, fontsize=9)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(os.fspath(path), dpi=80)


def _figure_class():
    """matplotlib's Figure, used without pyplot so no window system or global state is involved."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib (or pip install mpiprop[examples])") from None
    return Figure
