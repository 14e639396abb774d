"""GradientSync: the one object that averages a list of parameters' gradients over a group of ranks."""
from __future__ import annotations

import warnings
from typing import Sequence

from mpiprop.distributed.data_parallel.bucket_allreduce_mpi import MpiBucketAllreduce
from mpiprop.distributed.data_parallel.bucket_allreduce_shared import (SharedMemoryBucketAllreduce,
                                                                       shared_memory_possible, shared_memory_shortage)
from mpiprop.distributed.data_parallel.buckets import DEFAULT_BUCKET_CAP_MB, GradientBucket, assign_buckets, bucket_size
from mpiprop.distributed.data_parallel.gradient_reducer import GradientReducer, SyncStats
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import device_of
from mpiprop.network.parameter import Parameter


class GradientSync:
    """Sums the gradients of `params` over the ranks of `comm`, bucket by bucket, as backward completes them.

    The gradients become views into flat buckets. Call `start()` before a backward, pass
    `mark_final` to `Sequential.backward(..., on_parameters_final=...)` (a bucket's reduction
    starts once its last gradient is final, overlapping the rest of backward) and `finish()`
    after it; `reduce_all()` does all three for gradients that are already final. The sums
    are summed, not averaged: scale the output gradient (or the result) by 1 / `comm.size`.

    Args:
        params: in the order their gradients become final (last layer first).
        comm: the ranks that hold the same parameters (data-parallel replicas).
        bucket_cap_mb: target size of a bucket in MiB.
        compression: None, or "float16" to reduce float16 copies of the buckets.
        shared_memory: sum in memory shared by the ranks of one node when possible (see
            bucket_allreduce_shared); otherwise, or when /dev/shm lacks room (rank 0 warns), MPI's allreduce.

    Raises:
        ValueError: for a non-positive bucket size.
    """

    def __init__(self, params: Sequence[Parameter], comm: Communicator, *,
                 bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB, compression: str | None = None,
                 shared_memory: bool = True):
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        self.comm, self.compression = comm, compression
        groups = assign_buckets(list(params), int(bucket_cap_mb * 2**20)) if params else []
        shared = self._shared_memory_allreduce(groups, shared_memory)
        self.buckets = [GradientBucket(group, None if shared is None else shared.buffers[index])
                        for index, group in enumerate(groups)]
        allreduce = shared or MpiBucketAllreduce([bucket.buffer for bucket in self.buckets], comm, compression)
        self._reducer = GradientReducer(self.buckets, allreduce)

    def _shared_memory_allreduce(self, groups: list[list[Parameter]],
                                 shared_memory: bool) -> SharedMemoryBucketAllreduce | None:
        """Buckets in memory shared by the ranks, when asked for, uncompressed and possible (one node, CPU,
        room enough); a warning on rank 0 when only the room is missing."""
        dtypes = [group[0].dtype for group in groups]
        sizes = [bucket_size(group) for group in groups]
        on_cpu = all(device_of(group[0].data) == "cpu" for group in groups)
        if not (groups and shared_memory and self.compression is None
                and shared_memory_possible(self.comm, dtypes, on_cpu)):
            return None
        shortage = shared_memory_shortage(self.comm, sizes, dtypes)
        if shortage is not None:
            if self.comm.is_main:
                warnings.warn(shortage, RuntimeWarning, stacklevel=4)
            return None
        return SharedMemoryBucketAllreduce(sizes, dtypes, self.comm)

    def start(self) -> None:
        """Begin a synchronised backward. Raises RuntimeError when a gradient left its bucket."""
        self._reducer.start()

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
            bucket.buffer *= bucket.buffer.dtype.type(factor)

    def zero_grad(self) -> None:
        """Reset every gradient to zero (one fill per bucket)."""
        for bucket in self.buckets:
            bucket.buffer.fill(0)

    @property
    def launched_buckets(self) -> int:
        """How many buckets' reductions have started in the current synchronised backward."""
        return sum(self._reducer.allreduce.launched(index) for index in range(len(self.buckets)))

    @property
    def last_stats(self) -> SyncStats:
        return self._reducer.last_stats

    @property
    def allreduce_kind(self) -> str:
        """"shared memory" when the ranks sum in a shared window, else "mpi"."""
        return "shared memory" if isinstance(self._reducer.allreduce, SharedMemoryBucketAllreduce) else "mpi"
