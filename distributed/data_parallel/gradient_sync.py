"""GradientSync: the one object that averages a list of parameters' gradients over a group of ranks."""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy

from mpiprop.distributed.data_parallel.bucket_allreduce import BucketAllreduce
from mpiprop.distributed.data_parallel.bucket_allreduce_hierarchical import HierarchicalBucketAllreduce
from mpiprop.distributed.data_parallel.bucket_allreduce_mpi import MpiBucketAllreduce
from mpiprop.distributed.data_parallel.bucket_allreduce_shared import (SharedMemoryBucketAllreduce,
                                                                       shared_memory_possible, shared_memory_shortage)
from mpiprop.distributed.data_parallel.bucket_reduce_scatter import MpiBucketReduceScatter
from mpiprop.distributed.data_parallel.bucket_reduce_scatter_shared import SLOTS, SharedMemoryBucketReduceScatter
from mpiprop.distributed.data_parallel.gradient_slots import GradientSlots, slots_shortage
from mpiprop.distributed.data_parallel.node_groups import node_groups
from mpiprop.distributed.data_parallel.buckets import DEFAULT_BUCKET_CAP_MB, GradientBucket, assign_buckets, bucket_size
from mpiprop.distributed.data_parallel.gradient_reducer import GradientReducer, SyncStats
from mpiprop.distributed.data_parallel.sharded_gradient_bucket import GradientBytes, ShardedGradientBucket
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import device_of
from mpiprop.network.layers.parameter import Parameter


class GradientSync:
    """Sums the gradients of `params` over the ranks of `comm`, bucket by bucket, as backward completes them.

    The gradients become views into flat buckets. Call `start()` before a backward, pass
    `mark_written` and `mark_final` to `Sequential.backward(..., on_parameters_written=...,
    on_parameters_final=...)` (a bucket's reduction starts once its last gradient is final,
    overlapping the rest of backward) and `finish()` after it; `reduce_all()` starts and
    finishes for gradients that are already final. The sums are summed, not averaged: scale
    the output gradient (or the result) by 1 / `comm.size`.

    Args:
        params: in the order their gradients become final (last layer first).
        comm: the ranks that hold the same parameters (data-parallel replicas).
        bucket_cap_mb: target size of a bucket in MiB.
        compression: None, or "float16" to reduce float16 copies of the buckets.
        shared_memory: sum in memory shared by the ranks of each node when possible (see
            bucket_allreduce_shared; ranks on several nodes sum within each node, then between one
            leader per node); otherwise, or when /dev/shm lacks room (rank 0 warns), MPI's allreduce.
        owners: None to sum every gradient on every rank; else the rank that owns each of `params`
            (from `shard_owners`): the buckets are sharded (ZeRO-2, see ShardedGradientBucket) and
            reduce-scattered. Between synchronised backwards each rank holds its own parameters'
            gradients (their sums over the ranks after `finish`; the others read as zero); a bucket
            is whole only from backward's first write into it (`mark_written`) until its
            reduce-scatter completes. With `shared_memory`, on one node: in a ring of SLOTS
            bucket-sized slots per rank in one shared window, held until its communicator is freed and counted in
            `held_bytes` (see SharedMemoryBucketReduceScatter); otherwise, or when /dev/shm lacks
            room (rank 0 warns), with MPI, at most two buckets reduce-scattering at once (see
            MpiBucketReduceScatter). Needs numpy gradients and no compression.
        tally: also sum one number per backward along with the gradients (`start(tally=...)`, then
            `summed_tally`), in one more element of the last bucket, when the sum is exact: no
            compression and a last bucket of float32 or wider (see `carries_tally`; sums below
            `tally_limit` are exact).

    Raises:
        ValueError: for a non-positive bucket size; with `owners`, for a compression, GPU
            gradients or owners that are not one per parameter in rank order.
    """

    def __init__(self, params: Sequence[Parameter], comm: Communicator, *,
                 bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB, compression: str | None = None,
                 shared_memory: bool = True, owners: Sequence[int] | None = None, tally: bool = False):
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        self.comm, self.compression = comm, compression
        groups = assign_buckets(list(params), int(bucket_cap_mb * 2**20)) if params else []
        self.carries_tally = tally and compression is None and bool(groups) and _sums_integers_exactly(groups[-1])
        tallied = [self.carries_tally and index == len(groups) - 1 for index in range(len(groups))]
        self.tally_limit = 2 ** (numpy.finfo(groups[-1][0].dtype).nmant + 1) if self.carries_tally else 0
        self._gradient_bytes = GradientBytes()
        self._slot_bytes = 0
        if owners is None:
            allreduce = self._whole_buckets(groups, shared_memory, tallied)
        else:
            allreduce = self._sharded_buckets(groups, list(params), owners, tallied, shared_memory)
        self._reducer = GradientReducer(self.buckets, allreduce)

    def _whole_buckets(self, groups: list[list[Parameter]], shared_memory: bool,
                       tallied: list[bool]) -> BucketAllreduce:
        """Every rank holds every bucket whole; returns what sums them (in shared memory where possible)."""
        shared = self._shared_memory_allreduce(groups, shared_memory, tallied)
        self.buckets = [GradientBucket(group, None if shared is None else shared.buffers[index], tally=tallied[index])
                        for index, group in enumerate(groups)]
        self._gradient_bytes.add(sum(bucket.held_bytes for bucket in self.buckets))
        return shared if shared is not None else MpiBucketAllreduce([bucket.buffer for bucket in self.buckets],
                                                                    self.comm, self.compression)

    def _sharded_buckets(self, groups: list[list[Parameter]], params: list[Parameter], owners: Sequence[int],
                         tallied: list[bool], shared_memory: bool) -> BucketAllreduce:
        """Each rank holds its own gradients, and each bucket whole only while backward writes and reduces it."""
        if len(owners) != len(params):
            raise ValueError(f"owners names {len(owners)} ranks for {len(params)} parameters; give one per parameter")
        if any(later < earlier for earlier, later in zip(owners, owners[1:])):
            raise ValueError(f"owners {list(owners)} decrease; a reduce-scatter needs them in rank order, "
                             "as shard_owners gives them")
        if self.compression is not None:
            raise ValueError(f"reduce-scattered gradients cannot be compressed (compression={self.compression!r}); "
                             "pass compression=None")
        if not all(device_of(p.data) == "cpu" for p in params):
            raise ValueError("reduce-scattered gradients must be numpy arrays; keep the model on the CPU, or "
                             "shard only the optimizer state (ZeRO-1)")
        owner_of = {id(p): owner for p, owner in zip(params, owners)}
        self.buckets = [ShardedGradientBucket(group, [owner_of[id(p)] for p in group], self.comm.rank, self.comm.size,
                                              self._gradient_bytes, tally=tallied[index])
                        for index, group in enumerate(groups)]
        slots = self._shared_gradient_slots(shared_memory)
        if slots is None:
            return MpiBucketReduceScatter(self.buckets, self.comm)
        self._slot_bytes = slots.nbytes
        self._gradient_bytes.add(slots.nbytes)
        return SharedMemoryBucketReduceScatter(self.buckets, self.comm, slots)

    def _shared_gradient_slots(self, shared_memory: bool) -> GradientSlots | None:
        """The ring of shared slots for sharded buckets, where asked for, possible, on one node and with room
        in /dev/shm (else rank 0 warns); None otherwise. Collective."""
        if not (self.buckets and shared_memory and
                shared_memory_possible(self.comm, [bucket.dtype for bucket in self.buckets], on_cpu=True)):
            return None
        groups = node_groups(self.comm)
        groups.free()
        if groups.nodes > 1:
            return None
        shortage = slots_shortage(self.buckets, SLOTS, self.comm)
        if shortage is not None:
            if self.comm.is_main:
                warnings.warn(shortage, RuntimeWarning, stacklevel=5)
            return None
        return GradientSlots(self.buckets, SLOTS, self.comm)

    def _shared_memory_allreduce(self, groups: list[list[Parameter]], shared_memory: bool,
                                 tallied: list[bool]) -> BucketAllreduce | None:
        """Buckets in memory shared by each node's ranks, when asked for, uncompressed and possible."""
        if not (groups and shared_memory and self.compression is None):
            return None
        on_cpu = all(device_of(group[0].data) == "cpu" for group in groups)
        return shared_memory_bucket_allreduce([bucket_size(group, tally) for group, tally in zip(groups, tallied)],
                                              [group[0].dtype for group in groups], self.comm, on_cpu)

    def start(self, tally: int = 0) -> None:
        """Begin a synchronised backward; `tally` is this rank's number to sum along (with `carries_tally`).

        Raises:
            RuntimeError: when a gradient left its bucket.
        """
        self._reducer.start()
        self._gradient_bytes.reset_peak()
        if self.carries_tally:
            self.buckets[-1].tally.fill(tally)

    def mark_written(self, params: list[Parameter]) -> None:
        """Backward is about to write these parameters' gradients: make their buckets whole where they are not
        (pass to `Sequential.backward(..., on_parameters_written=...)`; only sharded buckets need it)."""
        self._reducer.mark_written(params)

    def mark_final(self, params: list[Parameter]) -> None:
        """These parameters' gradients are complete: reduce each bucket they complete."""
        self._reducer.mark_ready(params)

    def finish(self) -> SyncStats:
        """Reduce what is left and wait: every gradient is then summed over the ranks."""
        return self._reducer.finish()

    def reduce_all(self) -> SyncStats:
        """Sum every gradient over the ranks now (after a backward without `mark_final`)."""
        self.start()
        return self.finish()

    def scale(self, factor: float) -> None:
        """Multiply every gradient by `factor` (one pass per bucket)."""
        for bucket in self.buckets:
            bucket.scale(factor)

    def zero_grad(self) -> None:
        """Reset every gradient to zero (one fill per bucket)."""
        for bucket in self.buckets:
            bucket.zero()

    @property
    def launched_buckets(self) -> int:
        """How many buckets' reductions have started in the current synchronised backward."""
        return sum(self._reducer.allreduce.launched(index) for index in range(len(self.buckets)))

    @property
    def held_bytes(self) -> int:
        """Bytes of gradient storage this rank holds now (flags, tally and a sharded bucket's zero element included)."""
        return self._gradient_bytes.now

    @property
    def slot_bytes(self) -> int:
        """Bytes of this rank's slots in shared memory for whole sharded buckets (0 without them), in `held_bytes`."""
        return self._slot_bytes

    @property
    def peak_held_bytes(self) -> int:
        """The most bytes of gradient storage this rank held at once since the last `start()`."""
        return self._gradient_bytes.peak

    @property
    def summed_tally(self) -> int:
        """After `finish`: the sum over ranks of the `tally` each passed to `start` (with `carries_tally`)."""
        return int(self.buckets[-1].tally[0])

    @property
    def last_stats(self) -> SyncStats:
        return self._reducer.last_stats

    @property
    def allreduce_kind(self) -> str:
        """"shared memory" (one node), "hierarchical" (several nodes) or "mpi" (MPI's allreduce); with owners,
        "shared memory reduce-scatter" (one node) or "mpi reduce-scatter"."""
        return self._reducer.allreduce.kind


def _sums_integers_exactly(group: list[Parameter]) -> bool:
    """Whether a bucket of these parameters' dtype sums whole numbers of rows exactly (float32 or wider)."""
    dtype = numpy.dtype(group[0].dtype)
    return dtype.kind == "f" and numpy.finfo(dtype).nmant >= numpy.finfo(numpy.float32).nmant


def shared_memory_bucket_allreduce(sizes: Sequence[int], dtypes: Sequence[numpy.dtype], comm: Communicator,
                                   on_cpu: bool) -> BucketAllreduce | None:
    """Buckets in memory shared by the ranks of each node, summed there; None where that cannot serve.

    All ranks on one node: SharedMemoryBucketAllreduce. Several nodes (or pretend nodes, see
    MPIPROP_PRETEND_NODES): HierarchicalBucketAllreduce, within each node and then between one
    leader per node. None (use MPI's allreduce) for one rank, GPU arrays, dtypes other than
    floats, Open MPI with its UCX one-sided component (see `window_prints_errors`), one rank
    per node, or a node whose /dev/shm lacks room for its ranks' buckets (rank 0 then warns
    with the sizes). Collective over `comm`.

    Args:
        sizes: elements of each bucket.
        dtypes: dtype of each bucket.
        comm: the data-parallel ranks.
        on_cpu: whether the gradients are numpy arrays.

    Raises:
        ValueError: on every rank, for a malformed MPIPROP_PRETEND_NODES.
    """
    if not shared_memory_possible(comm, dtypes, on_cpu):
        return None
    groups = node_groups(comm)
    largest_node = comm.allreduce_object(groups.node.size, op="max")
    shortage = None if largest_node == 1 else shared_memory_shortage(comm, sizes, dtypes, largest_node)
    if largest_node == 1 or shortage is not None or groups.nodes == 1:
        groups.free()
    if shortage is not None and comm.is_main:
        warnings.warn(shortage, RuntimeWarning, stacklevel=4)
    if largest_node == 1 or shortage is not None:
        return None
    if groups.nodes == 1:
        return SharedMemoryBucketAllreduce(sizes, dtypes, comm)
    return HierarchicalBucketAllreduce(sizes, dtypes, groups.node, groups.leaders)
