"""GradientReducer: starts each bucket's allreduce as soon as its gradients are final, then waits for the sums."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

from mpiprop.distributed.data_parallel.bucket_allreduce import BucketAllreduce
from mpiprop.distributed.data_parallel.buckets import GradientBucket
from mpiprop.distributed.data_parallel.sharded_gradient_bucket import ShardedGradientBucket
from mpiprop.distributed.reliability.timeline import span
from mpiprop.network.layers.parameter import Parameter


@dataclass
class SyncStats:
    """Timings of the last synchronised backward, for measuring overlap.

    Attributes:
        backward_seconds: from the start of backward to the last layer's gradients.
        wait_seconds: time spent finishing the allreduces after that (communication not hidden).
        buckets: number of buckets reduced.
        bytes: bytes handed to the allreduces (after compression).
        launched_during_backward: buckets whose reduction had started when backward ended.
    """

    backward_seconds: float = 0.0
    wait_seconds: float = 0.0
    buckets: int = 0
    bytes: int = 0
    launched_during_backward: int = 0


class GradientReducer:
    """Sums bucketed gradients over ranks, one bucket at a time as backward makes them final.

    The sum is the mean because DataParallel divides each rank's output gradient by the
    number of ranks before backward. Call `start()` before a backward, `mark_ready(params)`
    whenever parameters' gradients are final (a bucket is launched when its last parameter is
    marked), and `finish()` after it.

    Args:
        buckets: in the order their gradients become final (reverse layer order).
        allreduce: what sums the buckets' buffers (same order): MPI's allreduce or a
            shared-memory one.
    """

    def __init__(self, buckets: Iterable[GradientBucket | ShardedGradientBucket], allreduce: BucketAllreduce):
        self.buckets = list(buckets)
        self.allreduce = allreduce
        self._bucket_of = {id(p): index for index, bucket in enumerate(self.buckets) for p in bucket.params}
        self._remaining: list[int] = []
        self._backward_started = 0.0
        self.last_stats = SyncStats()

    def start(self) -> None:
        """Reset the per-backward bookkeeping.

        Raises:
            RuntimeError: when a parameter's gradient was rebound away from its bucket view.
        """
        for bucket in self.buckets:
            moved = bucket.rebound_parameter()
            if moved is not None:
                raise RuntimeError(f"the gradient of a {moved!r} is no longer a view into its data-parallel bucket "
                                   "(was the model moved with .to() after wrapping?); move or cast the model "
                                   "before wrapping it in DataParallel")
        self._remaining = [len(bucket.params) for bucket in self.buckets]
        self.allreduce.start()
        self._backward_started = time.perf_counter()

    def mark_written(self, params: Iterable[Parameter]) -> None:
        """Backward is about to write these parameters' gradients: make each one's bucket whole."""
        for p in params:
            self.allreduce.make_whole(self._bucket_of[id(p)])

    def mark_ready(self, params: Iterable[Parameter]) -> None:
        """Record that these parameters' gradients are final; launch every bucket that became complete."""
        for p in params:
            index = self._bucket_of[id(p)]
            self._remaining[index] -= 1
            if self._remaining[index] == 0:
                self._launch(index)
        self.allreduce.progress()

    def _launch(self, index: int) -> None:
        self.buckets[index].write_flags()
        self.allreduce.launch(index)

    def finish(self) -> SyncStats:
        """Launch what is left, wait for every sum, and leave each gradient summed over ranks (and each
        parameter's `has_grad` set when any rank had a gradient for it)."""
        backward_done = time.perf_counter()
        launched_early = sum(self.allreduce.launched(index) for index in range(len(self.buckets)))
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

