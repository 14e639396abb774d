"""MpiBucketReduceScatter: each rank receives the sums of its own parameters' gradients only (ZeRO-2)."""
from __future__ import annotations

from typing import Sequence

import numpy
from mpi4py import MPI

from mpiprop.distributed.data_parallel.bucket_allreduce import BucketAllreduce
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.request import Request, wait_all
from mpiprop.network.backend import Array


class MpiBucketReduceScatter(BucketAllreduce):
    """Reduce-scatters each bucket's gradients over the ranks of `comm`, launched one bucket at a time.

    A bucket's buffer holds gradients, then one has-gradient flag per parameter. Rank r owns
    `counts[b][r]` consecutive gradient elements of bucket b, in rank order. After `finish()`
    each rank's own elements hold their sums over the ranks, the other gradient elements are
    zero (this rank holds no sum for them) and the flags are summed on every rank.

    Args:
        buffers: the buckets' flat buffers (numpy).
        comm: the data-parallel ranks.
        counts: for each bucket, the gradient elements of each rank.

    Raises:
        ValueError: when a bucket's counts do not fit its buffer.
    """

    kind = "mpi reduce-scatter"

    def __init__(self, buffers: Sequence[Array], comm: Communicator, counts: Sequence[Sequence[int]]):
        super().__init__(buffers, comm)
        self.counts = [list(bucket_counts) for bucket_counts in counts]
        for index, (buffer, bucket_counts) in enumerate(zip(self.buffers, self.counts)):
            if len(bucket_counts) != comm.size or sum(bucket_counts) > buffer.size:
                raise ValueError(f"bucket {index} has {buffer.size} elements but the counts {bucket_counts} "
                                 f"are not one per rank of {comm.size} fitting it")
        self.offsets = [int(numpy.cumsum([0] + bucket_counts)[comm.rank]) for bucket_counts in self.counts]
        mine = [bucket_counts[comm.rank] for bucket_counts in self.counts]
        self._received = [numpy.empty(count, dtype=buffer.dtype) for count, buffer in zip(mine, self.buffers)]
        self._flag_requests: list[Request | None] = []

    def start(self) -> None:
        super().start()
        self._flag_requests = [None] * len(self.buffers)

    def launch(self, index: int) -> None:
        buffer, counts = self.buffers[index], self.counts[index]
        gradients = sum(counts)
        self._trace(index, int(buffer[:gradients].nbytes))
        mpi = self.comm.mpi_comm
        self._requests[index] = Request(mpi.Ireduce_scatter(buffer[:gradients], self._received[index], counts, MPI.SUM),
                                        keep_alive=buffer, what=f"reduce-scatter of gradient bucket {index}")
        self._flag_requests[index] = Request(mpi.Iallreduce(MPI.IN_PLACE, buffer[gradients:], MPI.SUM),
                                             keep_alive=buffer, what=f"allreduce of bucket {index}'s flags")

    def progress(self) -> None:
        """Let MPI advance the reductions in flight (MPICH progresses only inside MPI calls)."""
        for request in self._requests + self._flag_requests:
            if request is not None and not request.done:
                request.test()

    def finish(self) -> int:
        """Wait for every launched reduction; own sums in place, the rest of the gradients zero; returns bytes sent."""
        wait_all([request for request in self._requests + self._flag_requests if request is not None])
        self._end_traces()
        for buffer, counts, offset, received in zip(self.buffers, self.counts, self.offsets, self._received):
            buffer[:sum(counts)] = 0
            buffer[offset:offset + received.size] = received
        return sum(int(buffer.nbytes) for buffer in self.buffers)
