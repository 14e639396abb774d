"""Partition a Sequential into contiguous pipeline stages: by explicit balance, parameter count or measured time."""
from __future__ import annotations

import time
from typing import Sequence

from mpiprop.distributed.pipeline.untouched_state import untouched_state
from mpiprop.network.backend import Array, synchronize
from mpiprop.network.checks import positive_int
from mpiprop.network.layers.sequential import Sequential


def check_balance(balance: Sequence[int], layers: int, parts: int) -> list[int]:
    """Return `balance` (layers per part) as a list after checking it fits the model.

    Raises:
        ValueError: when it has the wrong number of entries, an entry below 1, or does not
            sum to the number of layers; the message gives the numbers.
    """
    balance = list(balance)
    if len(balance) != parts:
        raise ValueError(f"balance {balance} has {len(balance)} entries but the pipeline has {parts} "
                         f"stages (chunks); give one layer count per stage")
    for index, count in enumerate(balance):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"balance {balance}: entry {index} is {count!r}; every stage needs at least one layer")
    if sum(balance) != layers:
        raise ValueError(f"balance {balance} sums to {sum(balance)} but the model has {layers} layers; "
                         f"make the counts add up to {layers}")
    return balance


def layer_ranges(balance: Sequence[int]) -> list[tuple[int, int]]:
    """The (start, stop) layer indices of each part, e.g. [2, 3] -> [(0, 2), (2, 5)]."""
    ranges, start = [], 0
    for count in balance:
        ranges.append((start, start + count))
        start += count
    return ranges


def balance_costs(costs: Sequence[float], parts: int) -> list[int]:
    """Cut `costs` into `parts` contiguous non-empty runs whose largest sum is as small as possible.

    Among optimal cuts, earlier parts take as many layers as fit, so a cost-free layer
    (an activation) stays with the layer before it.

    Args:
        costs: non-negative cost per layer.
        parts: number of runs, at most `len(costs)`.

    Returns:
        the number of layers in each run.

    Raises:
        ValueError: when there are fewer layers than parts or a cost is negative.
    """
    parts = positive_int(parts, "number of stages")
    if len(costs) < parts:
        raise ValueError(f"cannot cut {len(costs)} layers into {parts} stages; every stage needs at least "
                         f"one layer, so use at most {len(costs)} stages")
    if any(cost < 0 for cost in costs):
        raise ValueError(f"layer costs must be non-negative, got {list(costs)}")
    bound = _smallest_largest_part(list(costs), parts)
    return _fill_greedily(list(costs), parts, bound)


def _smallest_largest_part(costs: list[float], parts: int) -> float:
    """Dynamic programme over (layers used, parts used): the least achievable maximum part cost."""
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + cost)
    n = len(costs)
    infinity = float("inf")
    best = [[infinity] * (parts + 1) for _ in range(n + 1)]
    best[0][0] = 0.0
    for end in range(1, n + 1):
        for used in range(1, min(parts, end) + 1):
            best[end][used] = min(max(best[start][used - 1], prefix[end] - prefix[start])
                                  for start in range(used - 1, end))
    return best[n][parts]


def _fill_greedily(costs: list[float], parts: int, bound: float) -> list[int]:
    slack = 1e-9 * max(1.0, bound)
    balance, start = [], 0
    for part in range(parts):
        remaining_parts = parts - part - 1
        stop, total = start + 1, costs[start]
        while stop < len(costs) - remaining_parts and total + costs[stop] <= bound + slack:
            total += costs[stop]
            stop += 1
        if remaining_parts == 0:
            stop = len(costs)
        balance.append(stop - start)
        start = stop
    return balance


def parameter_counts(model: Sequential) -> list[int]:
    """Number of trainable scalars in each layer of `model`."""
    return [sum(p.size for p in layer.parameters()) for layer in model]


def measure_layer_times(model: Sequential, sample: Array, repeats: int = 3) -> list[float]:
    """Seconds of forward plus backward of each layer on `sample`, the median over `repeats` runs.

    The measurement leaves no trace: gradients and buffers (BatchNorm running statistics) are
    restored afterwards, and random draws (dropout) come from generators set aside for it.

    Args:
        model: the model to time, layer by layer.
        sample: a representative input batch (one micro-batch).
        repeats: timed repetitions per layer; the median is kept.
    """
    repeats = positive_int(repeats, "repeats")
    with untouched_state(model):
        return _time_each_layer(model, sample, repeats)


def _time_each_layer(model: Sequential, sample: Array, repeats: int) -> list[float]:
    times, x = [], sample
    for layer in model:
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            y, cache = layer.forward(x)
            layer.backward(y, cache)
            synchronize(y)
            samples.append(time.perf_counter() - start)
        times.append(sorted(samples)[len(samples) // 2])
        x = y
    return times
