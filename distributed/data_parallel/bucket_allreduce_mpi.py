"""MpiBucketAllreduce: one non-blocking MPI allreduce per gradient bucket, optionally of compressed copies."""
from __future__ import annotations

from typing import Sequence

import numpy

from mpiprop.distributed.data_parallel.bucket_allreduce import BucketAllreduce
from mpiprop.distributed.data_parallel.compression import NoCompression, as_compression
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.request import wait_all
from mpiprop.network.backend import Array


class MpiBucketAllreduce(BucketAllreduce):
    """Sums each flat buffer over the ranks of `comm` with `Iallreduce`, launched one by one.

    Works for every placement of ranks and for GPU buffers (through the Communicator's NCCL
    or host staging). With a `compression` (see compression.py) its encoding of each buffer goes
    over the wire and the sum is decoded back into the buffer; a compression that needs a scale gets
    the one the ranks agree on (one small allreduce of each bucket's largest magnitude).

    Raises:
        ValueError: for an unknown compression.
    """

    kind = "mpi"

    def __init__(self, buffers: Sequence[Array], comm: Communicator,
                 compression: "NoCompression | str | None" = None):
        self.compression = as_compression(compression)
        super().__init__(buffers, comm)
        self._wire_buffers: list[Array | None] = []
        self._scales: list[float] = []

    def start(self) -> None:
        super().start()
        self._wire_buffers = [None] * len(self.buffers)
        self._scales = [1.0] * len(self.buffers)

    def launch(self, index: int) -> None:
        buffer = self.buffers[index]
        if self.compression.needs_scale():
            self._scales[index] = self._agreed_scale(buffer)
        wire = self.compression.encode(buffer, self._scales[index])
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
            if wire is not None:
                self.compression.decode(wire, buffer, scale)
        return sum(int(wire.nbytes) for wire in self._wire_buffers if wire is not None)

    def _agreed_scale(self, buffer: Array) -> float:
        """The compression's scale for the largest magnitude of `buffer` over the ranks."""
        largest = numpy.array([float(abs(buffer).max()) if buffer.size else 0.0])
        largest = float(self.comm.allreduce(largest, "max")[0])
        return self.compression.scale_for(largest, self.comm.size)
