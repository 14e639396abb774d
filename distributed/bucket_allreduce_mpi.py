"""MpiBucketAllreduce: one non-blocking MPI allreduce per gradient bucket, optionally on float16 copies."""
from __future__ import annotations

from typing import Sequence

import numpy

from distributed.communicator import Communicator
from distributed.request import Request, wait_all
from distributed.timeline import begin, end
from network.backend import Array

COMPRESSIONS = (None, "float16")


class MpiBucketAllreduce:
    """Sums each flat buffer over the ranks of `comm` with `Iallreduce`, launched one by one.

    Works for every placement of ranks and for GPU buffers (through the Communicator's NCCL
    or host staging). With `compression="float16"` a float16 copy of each buffer goes over the
    wire and the sum is cast back into the buffer.

    Raises:
        ValueError: for an unknown compression.
    """

    def __init__(self, buffers: Sequence[Array], comm: Communicator, compression: str | None = None):
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown gradient compression {compression!r}; use one of {COMPRESSIONS}")
        self.buffers = list(buffers)
        self.comm = comm
        self.compression = compression
        self._requests: list[Request | None] = []
        self._wire_buffers: list[Array | None] = []
        self._trace_tokens: list = []

    def start(self) -> None:
        """Forget the previous backward's allreduces."""
        self._requests = [None] * len(self.buffers)
        self._wire_buffers = [None] * len(self.buffers)
        self._trace_tokens = [None] * len(self.buffers)

    def launched(self, index: int) -> bool:
        return self._requests[index] is not None

    def launch(self, index: int) -> None:
        """Start summing buffer `index`; its values must be final."""
        buffer = self.buffers[index]
        wire = buffer.astype(numpy.float16) if self.compression == "float16" else buffer
        self._wire_buffers[index] = wire
        self._trace_tokens[index] = begin("allreduce", track=f"bucket {index}", bucket=index, bytes=int(wire.nbytes))
        self._requests[index] = self.comm.iallreduce(wire, "sum")

    def progress(self) -> None:
        """Let MPI advance the allreduces in flight (MPICH progresses only inside MPI calls)."""
        for request in self._requests:
            if request is not None and not request.done:
                request.test()

    def finish(self) -> int:
        """Wait for every launched allreduce and leave the sums in the buffers; returns the bytes sent."""
        wait_all([request for request in self._requests if request is not None])
        for token in self._trace_tokens:
            end(token)
        for buffer, wire in zip(self.buffers, self._wire_buffers):
            if wire is not None and wire is not buffer:
                buffer[...] = wire
        return sum(int(wire.nbytes) for wire in self._wire_buffers if wire is not None)
