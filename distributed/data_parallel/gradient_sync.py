"""GradientSync: the one object that averages a list of parameters' gradients over a group of ranks."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy

from mpiprop.distributed.data_parallel.bucket_allreduce import BucketAllreduce
from mpiprop.distributed.data_parallel.bucket_allreduce_hierarchical import HierarchicalBucketAllreduce
from mpiprop.distributed.data_parallel.bucket_allreduce_mpi import MpiBucketAllreduce
from mpiprop.distributed.data_parallel.bucket_allreduce_shared import SharedMemoryBucketAllreduce
from mpiprop.distributed.data_parallel.bucket_reduce_scatter import MpiBucketReduceScatter
from mpiprop.distributed.data_parallel.bucket_reduce_scatter_shared import SLOTS, SharedMemoryBucketReduceScatter
from mpiprop.distributed.data_parallel.buckets import DEFAULT_BUCKET_CAP_MB, GradientBucket, assign_buckets, bucket_size
from mpiprop.distributed.data_parallel.compression import NoCompression, as_compression
from mpiprop.distributed.data_parallel.gradient_slots import GradientSlots, slots_shortage
from mpiprop.distributed.data_parallel.node_groups import NodeGroups
from mpiprop.distributed.data_parallel.reduction_choice import (HIERARCHICAL, SHARED_MEMORY,
                                                                SHARED_MEMORY_REDUCE_SCATTER, ReductionChoice,
                                                                choose_reduction, gather_facts, warn_of_shortage,
                                                                whole_bucket_window_shortage)
from mpiprop.distributed.data_parallel.sharded_gradient_bucket import GradientBytes, ShardedGradientBucket
from mpiprop.distributed.reliability.timeline import span
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import device_of
from mpiprop.network.layers.parameter import Parameter


@dataclass
class SyncStats:
    """Timings of the last synchronised backward, for measuring overlap.

    Attributes:
        backward_seconds: from the start of backward to the last layer's gradients.
        wait_seconds: time spent finishing the reductions after that (communication not hidden).
        buckets: number of buckets reduced.
        bytes: bytes handed to the reductions (after compression).
        launched_during_backward: buckets whose reduction had started when backward ended.
    """

    backward_seconds: float = 0.0
    wait_seconds: float = 0.0
    buckets: int = 0
    bytes: int = 0
    launched_during_backward: int = 0


class GradientSync:
    """Averages the gradients of `params` over the ranks of `comm`, bucket by bucket, as backward completes them.

    The gradients become views into flat buckets. Call `start(weight)` before a backward, pass
    `mark_written` and `mark_final` to `Sequential.backward(..., on_parameters_written=...,
    on_parameters_final=...)` (a bucket's reduction starts once its last gradient is final,
    overlapping the rest of backward) and `finish()` after it; `reduce_all(weight)` starts and
    finishes for gradients that are already final. Each rank's gradients count with the `weight`
    it passes (its share of the global batch's loss denominator; 1 / ranks for equal shares): every
    bucket is multiplied by it just before its reduction, so after `finish` each gradient is the
    weighted sum over the ranks, the global-batch mean when the weights are the shares. How the
    buckets are reduced is chosen once, at construction (see reduction_choice.py and `describe()`).

    Args:
        params: in the order their gradients become final (last layer first).
        comm: the ranks that hold the same parameters (data-parallel replicas).
        bucket_cap_mb: target size of a bucket in MiB.
        compression: a compression object (NoCompression(), Float16Compression()), None for none, or
            the name "float16".
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

    Raises:
        ValueError: for a non-positive bucket size or an unknown compression; with `owners`, for a
            compression, GPU gradients or owners that are not one per parameter in rank order.
    """

    def __init__(self, params: Sequence[Parameter], comm: Communicator, *,
                 bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB, compression: "NoCompression | str | None" = None,
                 shared_memory: bool = True, owners: Sequence[int] | None = None):
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        self.comm, self.compression = comm, as_compression(compression)
        groups = assign_buckets(list(params), int(bucket_cap_mb * 2**20)) if params else []
        self._gradient_bytes = GradientBytes()
        self._slot_bytes = 0
        if owners is None:
            self.allreduce = self._whole_buckets(groups, shared_memory)
        else:
            self.allreduce = self._sharded_buckets(groups, list(params), owners, shared_memory)
        self._bucket_of = {id(p): index for index, bucket in enumerate(self.buckets) for p in bucket.params}
        self._remaining: list[int] = []
        self._weight = 1.0
        self._backward_started = 0.0
        self.last_stats = SyncStats()

    def _whole_buckets(self, groups: list[list[Parameter]], shared_memory: bool) -> BucketAllreduce:
        """Every rank holds every bucket whole; returns what sums them (in shared memory where chosen)."""
        sizes, dtypes = [bucket_size(group) for group in groups], [group[0].dtype for group in groups]
        on_cpu = all(device_of(group[0].data) == "cpu" for group in groups)
        facts, nodes = gather_facts(self.comm, dtypes, on_cpu, self.compression, shared_memory,
                                    whole_bucket_window_shortage(self.comm, sizes, dtypes))
        self.choice = choose_reduction(facts)
        warn_of_shortage(facts, self.comm)
        shared = _shared_allreduce(self.choice, nodes, sizes, dtypes, self.comm)
        self.buckets = [GradientBucket(group, None if shared is None else shared.buffers[index])
                        for index, group in enumerate(groups)]
        self._gradient_bytes.add(sum(bucket.held_bytes for bucket in self.buckets))
        return shared if shared is not None else MpiBucketAllreduce([bucket.buffer for bucket in self.buckets],
                                                                    self.comm, self.compression)

    def _sharded_buckets(self, groups: list[list[Parameter]], params: list[Parameter], owners: Sequence[int],
                         shared_memory: bool) -> BucketAllreduce:
        """Each rank holds its own gradients, and each bucket whole only while backward writes and reduces it."""
        if len(owners) != len(params):
            raise ValueError(f"owners names {len(owners)} ranks for {len(params)} parameters; give one per parameter")
        if any(later < earlier for earlier, later in zip(owners, owners[1:])):
            raise ValueError(f"owners {list(owners)} decrease; a reduce-scatter needs them in rank order, "
                             "as shard_owners gives them")
        if not self.compression.exact:
            raise ValueError(f"reduce-scattered gradients cannot be compressed (compression="
                             f"{self.compression.name!r}); pass compression=None")
        if not all(device_of(p.data) == "cpu" for p in params):
            raise ValueError("reduce-scattered gradients must be numpy arrays; keep the model on the CPU, or "
                             "shard only the optimizer state (ZeRO-1)")
        owner_of = {id(p): owner for p, owner in zip(params, owners)}
        self.buckets = [ShardedGradientBucket(group, [owner_of[id(p)] for p in group], self.comm.rank, self.comm.size,
                                              self._gradient_bytes) for group in groups]
        facts, nodes = gather_facts(self.comm, [bucket.dtype for bucket in self.buckets], True, self.compression,
                                    shared_memory, lambda _: slots_shortage(self.buckets, SLOTS, self.comm),
                                    sharded=True)
        if nodes is not None:
            nodes.free()
        self.choice = choose_reduction(facts)
        warn_of_shortage(facts, self.comm)
        if self.choice.chosen != SHARED_MEMORY_REDUCE_SCATTER:
            return MpiBucketReduceScatter(self.buckets, self.comm)
        slots = GradientSlots(self.buckets, SLOTS, self.comm)
        self._slot_bytes = slots.nbytes
        self._gradient_bytes.add(slots.nbytes)
        return SharedMemoryBucketReduceScatter(self.buckets, self.comm, slots)

    def describe(self) -> str:
        """The reduction chosen and, for each other candidate, why not (see reduction_choice.py)."""
        return str(self.choice)

    # --- one synchronised backward ---------------------------------------------------------------
    def start(self, weight: float = 1.0) -> None:
        """Begin a synchronised backward in which this rank's gradients count with `weight`.

        Args:
            weight: what this rank's gradients are multiplied by before the sum over the ranks: its
                share of the global batch's loss denominator (1 / ranks for equal shares).

        Raises:
            RuntimeError: when a gradient left its bucket.
        """
        for bucket in self.buckets:
            moved = bucket.rebound_parameter()
            if moved is not None:
                raise RuntimeError(f"the gradient of a {moved!r} is no longer a view into its data-parallel bucket "
                                   "(was the model moved with .to() after wrapping?); move or cast the model "
                                   "before wrapping it in DataParallel")
        self._weight = float(weight)
        self._remaining = [len(bucket.params) for bucket in self.buckets]
        self.allreduce.start()
        self._gradient_bytes.reset_peak()
        self._backward_started = time.perf_counter()

    def mark_written(self, params: list[Parameter]) -> None:
        """Backward is about to write these parameters' gradients: make their buckets whole where they are not
        (pass to `Sequential.backward(..., on_parameters_written=...)`; only sharded buckets need it)."""
        for p in params:
            self.allreduce.make_whole(self._bucket_of[id(p)])

    def mark_final(self, params: list[Parameter]) -> None:
        """These parameters' gradients are complete: weigh and reduce each bucket they complete."""
        for p in params:
            index = self._bucket_of[id(p)]
            self._remaining[index] -= 1
            if self._remaining[index] == 0:
                self._launch(index)
        self.allreduce.progress()

    def _launch(self, index: int) -> None:
        bucket = self.buckets[index]
        if self._weight != 1.0:
            bucket.scale(self._weight)
        bucket.write_flags()
        self.allreduce.launch(index)

    def finish(self) -> SyncStats:
        """Reduce what is left and wait: every gradient is then the weighted sum over the ranks (and each
        parameter's `has_grad` set when any rank had a gradient for it)."""
        backward_done = time.perf_counter()
        launched_early = self.launched_buckets
        for index in range(len(self.buckets)):
            if not self.allreduce.launched(index):
                self._launch(index)
        with span("allreduce wait"):
            sent = self.allreduce.finish()
        for bucket in self.buckets:
            bucket.read_flags()
        self.last_stats = SyncStats(backward_seconds=backward_done - self._backward_started,
                                    wait_seconds=time.perf_counter() - backward_done, buckets=len(self.buckets),
                                    bytes=sent, launched_during_backward=launched_early)
        return self.last_stats

    def reduce_all(self, weight: float = 1.0) -> SyncStats:
        """Average every gradient over the ranks now, this rank's counting with `weight` (after a backward
        without `mark_final`)."""
        self.start(weight)
        return self.finish()

    def zero_grad(self) -> None:
        """Reset every gradient to zero (one fill per bucket)."""
        for bucket in self.buckets:
            bucket.zero()

    @property
    def launched_buckets(self) -> int:
        """How many buckets' reductions have started in the current synchronised backward."""
        return sum(self.allreduce.launched(index) for index in range(len(self.buckets)))

    @property
    def held_bytes(self) -> int:
        """Bytes of gradient storage this rank holds now (flags and a sharded bucket's zero element included)."""
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
    def allreduce_kind(self) -> str:
        """The chosen reduction: "shared memory" (one node), "hierarchical" (several nodes) or "mpi" (MPI's
        allreduce); with owners, "shared memory reduce-scatter" (one node) or "mpi reduce-scatter"."""
        return self.allreduce.kind


def _shared_allreduce(choice: ReductionChoice, nodes: NodeGroups | None, sizes: Sequence[int], dtypes: Sequence[numpy.dtype],
                      comm: Communicator) -> BucketAllreduce | None:
    """The shared-memory allreduce `choice` names, over the node groups `nodes` (freed when not kept)."""
    if choice.chosen == HIERARCHICAL:
        return HierarchicalBucketAllreduce(sizes, dtypes, nodes.node, nodes.leaders)
    if nodes is not None:
        nodes.free()
    return SharedMemoryBucketAllreduce(sizes, dtypes, comm) if choice.chosen == SHARED_MEMORY else None


def shared_memory_bucket_allreduce(sizes: Sequence[int], dtypes: Sequence[numpy.dtype], comm: Communicator,
                                   on_cpu: bool) -> BucketAllreduce | None:
    """Buckets in memory shared by the ranks of each node, summed there; None where the choice is MPI's allreduce.

    One node: SharedMemoryBucketAllreduce. Several nodes (or pretend nodes, see MPIPROP_PRETEND_NODES):
    HierarchicalBucketAllreduce, within each node and then between one leader per node. Collective.

    Raises:
        ValueError: on every rank, for a malformed MPIPROP_PRETEND_NODES.
    """
    facts, nodes = gather_facts(comm, dtypes, on_cpu, NoCompression(), True,
                                whole_bucket_window_shortage(comm, sizes, dtypes))
    warn_of_shortage(facts, comm)
    return _shared_allreduce(choose_reduction(facts), nodes, sizes, dtypes, comm)
