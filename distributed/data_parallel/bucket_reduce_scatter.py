"""MpiBucketReduceScatter: each rank receives the sums of its own parameters' gradients only (ZeRO-2)."""
from __future__ import annotations

from typing import Sequence

import numpy

from mpiprop.distributed.data_parallel.bucket_allreduce import BucketAllreduce
from mpiprop.distributed.data_parallel.sharded_gradient_bucket import ShardedGradientBucket
from mpiprop.distributed.reliability.waits import waiting_in
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.request import wait_all

IN_FLIGHT = 2  # buckets reduce-scattering at once; launching one more first waits for the oldest


class MpiBucketReduceScatter(BucketAllreduce):
    """Reduce-scatters each sharded bucket's gradients over the ranks of `comm`, launched one bucket at a time.

    `launch(index)` reduce-scatters bucket `index`'s whole gradient space (`full`, made now if
    backward wrote none of it) into each rank's `own` run. As soon as the reduce-scatter
    completes (seen while progressing, waiting or finishing) the bucket is released, so its whole
    gradient space lives only from backward's first write into it until then. At most IN_FLIGHT
    buckets reduce-scatter at once: launching another first waits for the oldest one. `finish()`
    waits for them all and sums every bucket's flags on every rank in one allreduce;
    then every rank's own gradients hold their sums over the ranks and the others read as zero.

    Args:
        buckets: the sharded buckets, in the order their gradients become final.
        comm: the data-parallel ranks.
    """

    kind = "mpi reduce-scatter"

    def __init__(self, buckets: Sequence[ShardedGradientBucket], comm: Communicator):
        super().__init__([bucket.tail for bucket in buckets], comm)
        self.buckets = list(buckets)
        self._in_flight: list[int] = []

    def start(self) -> None:
        super().start()
        self._in_flight.clear()

    def make_whole(self, index: int) -> None:
        """Make bucket `index`'s whole gradient space, in new memory, unless it exists."""
        self.buckets[index].materialize()

    def launch(self, index: int) -> None:
        bucket = self.buckets[index]
        bucket.materialize()
        self._trace(index, int(bucket.full.nbytes))
        self._requests[index] = self.comm.ireduce_scatter(bucket.full, bucket.own, bucket.counts).then(
            bucket.release, what=f"reduce-scatter of gradient bucket {index}")
        self._in_flight = [launched for launched in self._in_flight if not self._requests[launched].done] + [index]
        while len(self._in_flight) > IN_FLIGHT:
            self._wait_for_reduce_scatter(self._in_flight.pop(0))

    def _wait_for_reduce_scatter(self, index: int) -> None:
        """Block until bucket `index`'s reduce-scatter completes (and the bucket is released)."""
        self._requests[index].wait()

    def progress(self) -> None:
        """Let MPI advance the reductions in flight (MPICH progresses only inside MPI calls); release finished ones."""
        for request in self._requests:
            if request is not None and not request.done:
                request.test()

    def finish(self) -> int:
        """Wait for every launched reduction (own sums in place, the rest read as zero); returns bytes sent."""
        wait_all([request for request in self._requests if request is not None])
        return self._finish_after_gradients()

    def _finish_after_gradients(self) -> int:
        """Once every rank's own sums are in place: sum the flags and tallies; returns the bytes of the buckets."""
        self._in_flight.clear()
        self._sum_tails()
        self._end_traces()
        return sum(bucket.nbytes for bucket in self.buckets)

    def _sum_tails(self) -> None:
        """Sum every bucket's flags over the ranks: one allreduce per dtype, not one per bucket."""
        for dtype in dict.fromkeys(bucket.dtype for bucket in self.buckets):
            tails = [bucket.tail for bucket in self.buckets if bucket.dtype == dtype]
            joined = numpy.concatenate(tails)
            with waiting_in(f"allreduce of the flags of {len(tails)} gradient buckets"):
                self.comm.allreduce(joined)
            start = 0
            for tail in tails:
                tail[...] = joined[start:start + tail.size]
                start += tail.size
