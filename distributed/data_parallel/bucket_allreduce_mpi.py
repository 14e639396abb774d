"""MpiBucketAllreduce: one non-blocking MPI allreduce per gradient bucket, optionally on float16 copies."""
from __future__ import annotations

from typing import Sequence

import numpy

from mpiprop.distributed.data_parallel.bucket_allreduce import BucketAllreduce
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.request import wait_all
from mpiprop.network.backend import Array

COMPRESSIONS = (None, "float16")


class MpiBucketAllreduce(BucketAllreduce):
    """Sums each flat buffer over the ranks of `comm` with `Iallreduce`, launched one by one.

    Works for every placement of ranks and for GPU buffers (through the Communicator's NCCL
    or host staging). With `compression="float16"` a float16 copy of each buffer goes over the
    wire and the sum is cast back into the buffer.

    Raises:
        ValueError: for an unknown compression.
    """

    kind = "mpi"

    def __init__(self, buffers: Sequence[Array], comm: Communicator, compression: str | None = None):
        if compression not in COMPRESSIONS:
            raise ValueError(f"unknown gradient compression {compression!r}; use one of {COMPRESSIONS}")
        super().__init__(buffers, comm)
        self.compression = compression
        self._wire_buffers: list[Array | None] = []

    def start(self) -> None:
        super().start()
        self._wire_buffers = [None] * len(self.buffers)

    def launch(self, index: int) -> None:
        buffer = self.buffers[index]
        wire = buffer.astype(numpy.float16) if self.compression == "float16" else buffer
        self._wire_buffers[index] = wire
        self._trace(index, int(wire.nbytes))
        self._requests[index] = self.comm.iallreduce(wire, "sum")

    def progress(self) -> None:
        """Let MPI advance the allreduces in flight (MPICH progresses only inside MPI calls)."""
        for request in self._requests:
            if request is not None and not request.done:
                request.test()

    def finish(self) -> int:
        """Wait for every launched allreduce and leave the sums in the buffers; returns the bytes sent."""
        wait_all([request for request in self._requests if request is not None])
        self._end_traces()
        for buffer, wire in zip(self.buffers, self._wire_buffers):
            if wire is not None and wire is not buffer:
                buffer[...] = wire
        return sum(int(wire.nbytes) for wire in self._wire_buffers if wire is not None)
