"""MpiBucketAllreduce: one non-blocking MPI allreduce per gradient bucket, optionally on scaled float16 copies."""
from __future__ import annotations

from typing import Sequence

import math

import numpy

from mpiprop.distributed.data_parallel.bucket_allreduce import BucketAllreduce
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.request import wait_all
from mpiprop.network.backend import Array

COMPRESSIONS = (None, "float16")
FLOAT16_HEADROOM = 2.0 ** 15  # half of float16's largest value, so rounding in partial sums cannot reach inf


class MpiBucketAllreduce(BucketAllreduce):
    """Sums each flat buffer over the ranks of `comm` with `Iallreduce`, launched one by one.

    Works for every placement of ranks and for GPU buffers (through the Communicator's NCCL
    or host staging). With `compression="float16"` a float16 copy of each buffer goes over the
    wire and the sum is cast back into the buffer. The copy is scaled first by a power of two that
    the ranks agree on (one small allreduce of each bucket's largest magnitude), chosen so that the
    sum of all ranks' largest values fits half of float16's range: large gradients do not overflow to
    inf and small ones do not flush to zero (values below 2**-24 of the bucket's largest still do).
    Non-finite gradients stay non-finite.

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
        self._scales: list[float] = []

    def start(self) -> None:
        super().start()
        self._wire_buffers = [None] * len(self.buffers)
        self._scales = [1.0] * len(self.buffers)

    def launch(self, index: int) -> None:
        buffer = self.buffers[index]
        wire = buffer
        if self.compression == "float16":
            self._scales[index] = self._float16_scale(buffer)
            wire = (buffer * buffer.dtype.type(self._scales[index])).astype(numpy.float16)
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
        for buffer, wire, scale in zip(self.buffers, self._wire_buffers, self._scales):
            if wire is not None and wire is not buffer:
                buffer[...] = wire
                buffer *= buffer.dtype.type(1.0 / scale)
        return sum(int(wire.nbytes) for wire in self._wire_buffers if wire is not None)

    def _float16_scale(self, buffer: Array) -> float:
        """The power of two that makes the ranks' summed largest magnitude in `buffer` fit float16 (1 if none)."""
        largest = numpy.array([float(abs(buffer).max()) if buffer.size else 0.0])
        largest = float(self.comm.allreduce(largest, "max")[0])
        if not math.isfinite(largest) or largest == 0.0:
            return 1.0
        return 2.0 ** math.floor(math.log2(FLOAT16_HEADROOM / (largest * self.comm.size)))
