"""Evaluation over a loader: the exact per-sample loss and accuracy over all ranks, padded rows left out."""
from __future__ import annotations

from typing import Any, Callable

from mpiprop.network.backend import device_of, to_device
from mpiprop.network.compute.precision import Precision, using_precision
from mpiprop.network.layers.losses import Loss
from mpiprop.network.training.metrics import MetricSums, MetricTotals, count_correct
from mpiprop.network.training.ranks import Ranks
from mpiprop.network.training.strategy import TrainingStrategy

Combine = Callable[[MetricSums], MetricSums]


def evaluate(strategy: TrainingStrategy, loader: Any, loss_fn: Loss, *, accuracy: bool, precision: Precision,
             combine: Combine, prefix: str = "") -> dict[str, float]:
    """Loss (and accuracy) over every sample of `loader` once, combined over ranks; leaves the model in eval mode.

    Sums of losses and counts are combined, so the result is the exact per-sample mean however
    the samples are split into batches and shards; the rows a loader with uneven="pad" repeats
    to even out its shards are left out of the sums.

    Args:
        strategy: the layout.
        loader: yields (inputs, targets) batches of this rank's shard.
        loss_fn: a mean-reducing loss.
        accuracy: also count correct predictions.
        precision: how products are computed.
        combine: combines this rank's metric sums over ranks (see `combined_over_ranks`).
        prefix: put before each key ("val_").
    """
    strategy.eval()
    device = device_of_strategy(strategy)
    totals, rows_left = MetricTotals(), rows_of_its_own(loader)
    for inputs, targets in loader:
        x, y = to_device(inputs, device), to_device(targets, device)
        with using_precision(precision):
            output = strategy.predict(x)
        keep = len(y) if rows_left is None else max(0, min(len(y), rows_left))
        rows_left = None if rows_left is None else rows_left - len(y)
        if output is None or keep == 0:  # a pipeline stage other than the last, or padding only
            continue
        output, y = (output, y) if keep == len(y) else (output[:keep], y[:keep])
        loss, _ = loss_fn.forward(output, y)
        totals.add(loss, len(y), count_correct(output, y) if accuracy else None, int(y.size))
    return totals.result(combine, prefix)


def rows_of_its_own(loader: Any) -> int | None:
    """How many of this rank's rows in an epoch of `loader` are samples no other rank reads (None: all of them).

    A loader with uneven="pad" repeats the first samples of the order to give every rank
    ceil(n / ranks) rows; rank r's padded rows are the last of its shard, as shard positions
    r, r + ranks, ... at or past n wrap around.
    """
    dataset, ranks = getattr(loader, "dataset", None), getattr(loader, "world_size", 1)
    if getattr(loader, "uneven", None) != "pad" or dataset is None or len(dataset) % ranks == 0:
        return None
    n = len(dataset)
    return n // ranks + (loader.rank < n % ranks)


def combined_over_ranks(ranks: Ranks, average_metrics: Combine | None = None) -> Combine:
    """The combination of metric sums over the ranks: `average_metrics` when given, else sums in rank order
    (so every rank gets the same bits)."""
    if average_metrics is not None:
        return average_metrics

    def combine(sums: MetricSums) -> MetricSums:
        everyone = ranks.gather(sums)
        return {key: sum(float(rank_sums[key]) for rank_sums in everyone) for key in sums}
    return combine


def device_of_strategy(strategy: TrainingStrategy) -> str:
    """The device of the strategy's parameters on this rank ("cpu" for none)."""
    params = strategy.parameters()
    return device_of(params[0].data) if params else "cpu"
