"""Sequence parallelism's collectives: an activation's rows cut over the tensor-parallel ranks, gathered whole
before a split layer and reduce-scattered back into shards after one (Megatron's all-gather and reduce-scatter)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import numpy

from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.compute import rng


def shard_counts(rows: int, ranks: int) -> list[int]:
    """Rows per rank when `rows` are cut into `ranks` contiguous shards in rank order, the first `rows % ranks`
    one row longer (as numpy.array_split cuts them)."""
    return [rows // ranks + (1 if rank < rows % ranks else 0) for rank in range(ranks)]


def group_counts(shard: Array, group: Communicator) -> list[int]:
    """The row count of every rank's shard (one small allgather over `group`)."""
    counts = numpy.zeros(group.size, dtype=numpy.int64)
    counts[group.rank] = shard.shape[0]
    return [int(count) for count in group.allgatherv(counts, [1] * group.size)]


def gather_rows(shard: Array, group: Communicator, whole_rows: int | None = None) -> Array:
    """Every rank's shard joined along the first axis, in rank order: the whole activation, on every rank.

    `whole_rows`, where the caller knows it (a shard that `reduce_scatter_rows` cut), spares the
    allgather of the row counts."""
    counts = group_counts(shard, group) if whole_rows is None else shard_counts(whole_rows, group.size)
    xp = get_array_module(shard)
    whole = xp.empty((sum(counts),) + tuple(shard.shape[1:]), dtype=shard.dtype)
    start = sum(counts[:group.rank])
    whole[start:start + shard.shape[0]] = shard
    row = int(numpy.prod(shard.shape[1:], dtype=numpy.int64))
    group.allgatherv(whole.reshape(-1), [count * row for count in counts])
    return whole


def reduce_scatter_rows(whole: Array, group: Communicator) -> Array:
    """`whole` summed over the ranks, each rank receiving its shard of the rows (`shard_counts`)."""
    counts = shard_counts(whole.shape[0], group.size)
    xp = get_array_module(whole)
    shard = xp.empty((counts[group.rank],) + tuple(whole.shape[1:]), dtype=whole.dtype)
    row = int(numpy.prod(whole.shape[1:], dtype=numpy.int64))
    group.ireduce_scatter(xp.ascontiguousarray(whole).reshape(-1), shard.reshape(-1),
                          [count * row for count in counts]).wait()
    return shard


@contextmanager
def shard_rows_window(shard: Array, group: Communicator) -> Iterator[None]:
    """Inside, a layer drawing one number per row (Dropout) draws for the whole activation and keeps this rank's
    shard's rows, so every rank drops what one process would (see `rng.rows_within`). Collective."""
    counts = group_counts(shard, group)
    with rng.rows_within(sum(counts[:group.rank]), sum(counts)):
        yield
