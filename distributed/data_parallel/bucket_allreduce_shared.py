"""SharedMemoryBucketAllreduce: sum gradient buckets through memory that every rank of one node can read.

MPI's allreduce between processes of one node copies each buffer into shared cells,
reduces there and copies the result back out. When the buffers themselves live in an
MPI-3 shared window (`Communicator.allocate_shared`), each rank adds its peers' values for one
slice of a buffer straight into its own copy and writes the sum back into theirs, with no
copies in between: 0.56 ms instead of 1.40 ms through MPI's allreduce for the 7.4 MB of
gradients of a 784-1024-1024-10 MLP on 2 ranks (examples/benchmarks/bench_data_parallel.py).

A rank announces that a buffer is final with a non-blocking barrier. Once every rank has,
each owns one slice of it: it adds the other ranks' values of that slice into its own and
writes the sum into theirs (in `progress` during backward, else in `finish`). The slices
are disjoint, so no rank writes what another reads. `finish` ends with a barrier: after
it every buffer holds the whole sum, and a rank may write its buffers again. Each slice is
summed by one rank only, so every rank ends with bit-identical sums. `SharedWindow.sync` around
each barrier orders the loads and stores on processors that may reorder them.
"""
from __future__ import annotations

from typing import Sequence

import numpy

from mpiprop.distributed.data_parallel.bucket_allreduce import BucketAllreduce
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.request import wait_all
from mpiprop.distributed.transport.shared_memory_room import room_shortage, window_prints_errors
from mpiprop.distributed.reliability.timeline import span

ALIGNMENT = 64  # bytes: each buffer starts on a cache line
CHUNK_BYTES = 256 * 1024  # summed and copied piece by piece: 0.42 instead of 0.59 ms for 7.4 MB on 2 ranks


def shared_memory_possible(comm: Communicator, dtypes: Sequence[numpy.dtype], on_cpu: bool) -> bool:
    """Whether the ranks of `comm` can sum buffers in windows shared by the ranks of each node: there are
    several ranks, the buffers are numpy arrays of plain floats, and making a window prints no error
    (see `window_prints_errors`). Which ranks share a node is `node_groups`' business."""
    return (comm.size > 1 and on_cpu and all(numpy.dtype(dtype).kind == "f" for dtype in dtypes)
            and not window_prints_errors())


def shared_memory_shortage(comm: Communicator, sizes: Sequence[int], dtypes: Sequence[numpy.dtype],
                           ranks_per_window: int | None = None) -> str | None:
    """Why a window for these buffers would not fit on some rank's node, or None when it fits. Collective.

    A window larger than the free space of its tmpfs is not refused when made: the first
    write past the space kills the rank with SIGBUS. Hence the check, before making one.
    `ranks_per_window` is the most ranks sharing one window (default: all of `comm`).
    """
    ranks_per_window = comm.size if ranks_per_window is None else ranks_per_window
    needed = ranks_per_window * _aligned_offsets(sizes, [numpy.dtype(dtype) for dtype in dtypes])[1]
    return room_shortage(comm, needed, f"the shared gradient buckets of {ranks_per_window} ranks need",
                         "summing gradients with MPI's allreduce instead",
                         "pass DataParallel(..., shared_memory=False) to choose MPI's allreduce")


class SharedMemoryBucketAllreduce(BucketAllreduce):
    """Flat buffers of `sizes` elements of `dtypes` in a window shared by the ranks of `comm`.

    `buffers` are this rank's arrays (the gradient buckets are made over them); `launch`,
    `progress` and `finish` sum them over the ranks, in place. Construction is collective.
    Only for ranks on one node (see `node_groups`).
    """

    kind = "shared memory"

    def __init__(self, sizes: Sequence[int], dtypes: Sequence[numpy.dtype], comm: Communicator):
        self.sizes, self.dtypes = list(sizes), [numpy.dtype(dtype) for dtype in dtypes]
        offsets, total = _aligned_offsets(self.sizes, self.dtypes)
        self._window = comm.allocate_shared(total)
        self._all_buffers = [self._buffers_of(rank, offsets) for rank in range(comm.size)]
        super().__init__(self._all_buffers[comm.rank], comm)
        self._slices = [[_slice_of(size, rank, comm.size) for rank in range(comm.size)] for size in self.sizes]
        self._summed: list[bool] = []
        self._announcements = [f"allreduce of {buffer.size} {buffer.dtype} (gradient bucket {index}, in shared memory)"
                               for index, buffer in enumerate(self.buffers)]  # written once: formatting costs

    def start(self) -> None:
        super().start()
        self._summed = [False] * len(self.buffers)

    def launch(self, index: int) -> None:
        """Announce, with a non-blocking barrier, that this rank's buffer `index` is final."""
        buffer = self.buffers[index]
        self._trace(index, int(buffer.nbytes))
        self._window.sync()
        self._requests[index] = self.comm.ibarrier(what=self._announcements[index])

    def progress(self) -> None:
        """Sum this rank's slice of every buffer that all ranks have announced."""
        for index, ready in enumerate(self._requests):
            if ready is not None and not self._summed[index] and ready.test():
                self._sum_my_slice(index)

    def finish(self) -> int:
        """Sum what is left and wait until every rank has written its slices; returns the bytes of the buffers."""
        with span("shared-memory allreduce"):
            wait_all([ready for ready in self._requests if ready is not None])
            for index in range(len(self.buffers)):
                if not self._summed[index]:
                    self._sum_my_slice(index)
            self._window.sync()
            self.comm.barrier()
            self._window.sync()
        self._end_traces()
        return sum(int(buffer.nbytes) for buffer in self.buffers)

    def _sum_my_slice(self, index: int) -> None:
        """Add the other ranks' values of this rank's slice into it and write the sum into their buffers.

        In pieces of CHUNK_BYTES, so that each piece of the sum is still in cache when it is copied.
        """
        self._window.sync()
        mine = self._slices[index][self.comm.rank]
        buffer = self.buffers[index]
        others = [buffers[index] for rank, buffers in enumerate(self._all_buffers) if rank != self.comm.rank]
        step = max(1, CHUNK_BYTES // buffer.itemsize)
        for start in range(mine.start, mine.stop, step):
            piece = slice(start, min(start + step, mine.stop))
            total = buffer[piece]
            for other in others:
                total += other[piece]
            for other in others:
                other[piece] = total
        self._summed[index] = True

    def _buffers_of(self, rank: int, offsets: list[int]) -> list[numpy.ndarray]:
        memory = self._window.memory(rank)
        return [numpy.frombuffer(memory, dtype=dtype, count=size, offset=offset)
                for size, dtype, offset in zip(self.sizes, self.dtypes, offsets)]


def _aligned_offsets(sizes: Sequence[int], dtypes: Sequence[numpy.dtype]) -> tuple[list[int], int]:
    """Byte offset of each buffer, each on an ALIGNMENT boundary, and the bytes needed in all."""
    offsets, position = [], 0
    for size, dtype in zip(sizes, dtypes):
        offsets.append(position)
        position += -(-size * dtype.itemsize // ALIGNMENT) * ALIGNMENT
    return offsets, max(position, ALIGNMENT)


def _slice_of(size: int, rank: int, ranks: int) -> slice:
    return slice(size * rank // ranks, size * (rank + 1) // ranks)
