"""GradientReducer: starts each bucket's allreduce as soon as its gradients are final, then waits for the sums."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

import numpy

from distributed.buckets import GradientBucket
from distributed.communicator import Communicator
from distributed.request import Request, wait_all
from distributed.timeline import begin, end, span
from network.backend import Array
from network.parameter import Parameter

COMPRESSIONS = (None, "float16")


@dataclass
class SyncStats:
    """Timings of the last synchronised backward, for measuring overlap.

    Attributes:
        backward_seconds: from the start of backward to the last layer's gradients.
        wait_seconds: time spent waiting for allreduces after that (communication not hidden).
        buckets: number of buckets reduced.
        bytes: bytes handed to the allreduces (after compression).
    """

    backward_seconds: float = 0.0
    wait_seconds: float = 0.0
    buckets: int = 0
    bytes: int = 0


class GradientReducer:
    """Sums bucketed gradients over the ranks of `comm` with one non-blocking allreduce per bucket.

    The sum is the mean because DataParallel divides each rank's output gradient by the
    number of ranks before backward. Call `start()` before a backward, `mark_ready(params)`
    whenever parameters' gradients are final (a bucket is launched when its last parameter is
    marked), and `finish()` after it.

    Args:
        buckets: in the order their gradients become final (reverse layer order).
        comm: the ranks to sum over.
        compression: None, or "float16" to reduce a float16 copy of each bucket (half the bytes;
            each averaged gradient then carries float16's relative rounding error of about 5e-4,
            and magnitudes below about 6e-8 after division by the number of ranks become 0).

    Raises:
        ValueError: for an unknown compression.
    """

    def __init__(self, buckets: Iterable[GradientBucket], comm: Communicator, compression: str | None = None):
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown gradient compression {compression!r}; use one of {COMPRESSIONS}")
        self.buckets = list(buckets)
        self.comm = comm
        self.compression = compression
        self._bucket_of = {id(p): index for index, bucket in enumerate(self.buckets) for p in bucket.params}
        self._remaining: list[int] = []
        self._requests: list[Request | None] = []
        self._wire_buffers: list[Array | None] = []
        self._trace_tokens: list = []
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
        self._requests = [None] * len(self.buckets)
        self._wire_buffers = [None] * len(self.buckets)
        self._trace_tokens = [None] * len(self.buckets)
        self._backward_started = time.perf_counter()

    def mark_ready(self, params: Iterable[Parameter]) -> None:
        """Record that these parameters' gradients are final; launch every bucket that became complete."""
        for p in params:
            index = self._bucket_of[id(p)]
            self._remaining[index] -= 1
            if self._remaining[index] == 0:
                self._launch(index)
        self._drive_progress()

    def finish(self) -> SyncStats:
        """Launch what is left, wait for every allreduce, and leave each gradient summed over ranks."""
        backward_done = time.perf_counter()
        for index, request in enumerate(self._requests):
            if request is None:
                self._launch(index)
        with span("allreduce wait"):
            wait_all(self._requests)
        for token in self._trace_tokens:
            end(token)
        for index in range(len(self.buckets)):
            self._take_result(index)
        stats = SyncStats(backward_seconds=backward_done - self._backward_started,
                          wait_seconds=time.perf_counter() - backward_done, buckets=len(self.buckets),
                          bytes=sum(int(wire.nbytes) for wire in self._wire_buffers))
        self._requests, self._wire_buffers, self.last_stats = [], [], stats
        return stats

    def _launch(self, index: int) -> None:
        buffer = self.buckets[index].buffer
        wire = buffer.astype(numpy.float16) if self.compression == "float16" else buffer
        self._wire_buffers[index] = wire
        self._trace_tokens[index] = begin("allreduce", track=f"bucket {index}", bucket=index, bytes=int(wire.nbytes))
        self._requests[index] = self.comm.iallreduce(wire, "sum")

    def _take_result(self, index: int) -> None:
        buffer, wire = self.buckets[index].buffer, self._wire_buffers[index]
        if wire is not buffer:
            buffer[...] = wire

    def _drive_progress(self) -> None:
        for request in self._requests:
            if request is not None and not request.done:
                request.test()
