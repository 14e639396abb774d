"""Parameter shards: which data-parallel rank keeps the optimizer state of each whole parameter."""
from __future__ import annotations

from typing import Sequence


def shard_owners(sizes: Sequence[int], ranks: int) -> list[int]:
    """The rank that owns each parameter of `sizes` (elements): the one whose 1/`ranks` of all elements
    holds its middle.

    Taken in the gradient buckets' order, the owners never decrease, so each rank owns one run of
    consecutive parameters and, inside any bucket, the ranks' runs lie in rank order (what a
    reduce-scatter and an allgather over a bucket need). Every rank owns about 1/`ranks` of the
    elements, off by at most half of the largest parameter on each side.

    Args:
        sizes: the parameters' element counts, in the order of the gradient buckets.
        ranks: the number of data-parallel ranks.

    Returns:
        One rank per parameter, in `sizes` order.

    Raises:
        ValueError: for fewer than one rank.
    """
    if ranks < 1:
        raise ValueError(f"parameters are sharded over at least 1 rank, got {ranks}")
    total = sum(sizes)
    owners, before = [], 0
    for size in sizes:
        owners.append(min(ranks - 1, ranks * (2 * before + size) // max(2 * total, 1)))
        before += size
    return owners


def rank_counts(sizes: Sequence[int], owners: Sequence[int], ranks: int) -> list[int]:
    """Elements each rank owns of a run of parameters of `sizes` whose owners are `owners` (rank order)."""
    counts = [0] * ranks
    for size, owner in zip(sizes, owners):
        counts[owner] += size
    return counts
