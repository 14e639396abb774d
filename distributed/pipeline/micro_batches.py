"""Cutting a batch into micro-batches: sizes as equal as possible, and the loss weight of each."""
from __future__ import annotations

import math
from dataclasses import dataclass

from mpiprop.network.checks import positive_int


@dataclass(frozen=True)
class BatchPlan:
    """What every pipeline rank knows about a batch: micro-batch sizes, and the per-row shape and dtype of the input."""

    sizes: tuple[int, ...]
    feature_shape: tuple[int, ...]
    dtype: str

    @property
    def batch_size(self) -> int:
        return sum(self.sizes)

    @property
    def signature(self) -> tuple:
        """Inputs with equal signatures produce equal activation shapes at every stage boundary."""
        return self.feature_shape, self.dtype


def micro_batch_sizes(batch_size: int, micro_batches: int) -> list[int]:
    """Rows of each micro-batch: equal when `micro_batches` divides `batch_size`, otherwise the
    first `batch_size % micro_batches` micro-batches hold one row more (as numpy.array_split does).

    Raises:
        ValueError: when the batch has fewer rows than there are micro-batches.
    """
    batch_size = positive_int(batch_size, "batch size")
    micro_batches = positive_int(micro_batches, "micro_batches")
    if batch_size < micro_batches:
        raise ValueError(f"a batch of {batch_size} rows cannot be cut into {micro_batches} micro-batches; "
                         f"pass at least {micro_batches} rows or use fewer micro-batches")
    base, extra = divmod(batch_size, micro_batches)
    return [base + 1 if index < extra else base for index in range(micro_batches)]


def micro_batch_slices(sizes: list[int]) -> list[slice]:
    """The row slice of each micro-batch, e.g. [3, 2] -> [slice(0, 3), slice(3, 5)]."""
    slices, start = [], 0
    for size in sizes:
        slices.append(slice(start, start + size))
        start += size
    return slices


def loss_shares(denominators: list[float], total: float) -> list[float]:
    """Weight of each micro-batch's mean loss in the mean over a batch whose losses' denominator is `total`
    (summed over the replicas' shares too): its denominator over `total` (NaN each when `total` is 0, as torch's
    mean over nothing)."""
    return [denominator / total if total else math.nan for denominator in denominators]


def loss_weights(sizes: list[int]) -> list[float]:
    """Weight of each micro-batch's mean loss in the batch mean: its share of the rows.

    Summing weight * (micro-batch mean loss), and likewise scaling each micro-batch's loss
    gradient, gives exactly the batch mean for losses that average over rows.
    """
    total = sum(sizes)
    return [size / total for size in sizes]
