"""Messages between pipeline stages: non-blocking sends, receives posted ahead, tags and shape headers."""
from __future__ import annotations

import time
from typing import Any

import numpy

from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.polite_wait import wait_politely
from mpiprop.distributed.transport.request import Request, poll_all
from mpiprop.distributed.reliability.timeline import span
from mpiprop.network.backend import Array

ACTIVATION, GRADIENT, HEADER = 0, 1, 2
_HEADER_LENGTH = 16  # ndim, up to 14 feature sizes, dtype character


def encode_header(feature_shape: tuple[int, ...], dtype: Any) -> numpy.ndarray:
    """A fixed-size int64 message describing an activation: its per-row shape and dtype.

    Raises:
        ValueError: when the activation has more than 14 dimensions per row.
    """
    if len(feature_shape) > _HEADER_LENGTH - 2:
        raise ValueError(f"activations between stages may have at most {_HEADER_LENGTH - 2} dimensions per row, "
                         f"got shape {feature_shape}")
    header = numpy.zeros(_HEADER_LENGTH, dtype=numpy.int64)
    header[0] = len(feature_shape)
    header[1:1 + len(feature_shape)] = feature_shape
    header[-1] = ord(numpy.dtype(dtype).char)
    return header


def decode_header(header: numpy.ndarray) -> tuple[tuple[int, ...], numpy.dtype]:
    """(per-row shape, dtype) from `encode_header`'s message."""
    ndim = int(header[0])
    return tuple(int(size) for size in header[1:1 + ndim]), numpy.dtype(chr(int(header[-1])))


class StageLinks:
    """The point-to-point traffic of one pipeline rank, keyed by (direction, micro-batch, virtual stage).

    Virtual stage k lives on rank k % ranks. An activation for stage k and a gradient
    for stage k (coming from stage k+1) each get their own tag, so messages of different
    micro-batches and chunks never match each other. Sends never block; each request and
    its buffer stay alive until it completes. Receives are posted ahead and waited for only
    when a step needs the data; the time spent waiting is added to `waited`.

    Raises:
        ValueError: when a batch needs more tags than the MPI library offers.
    """

    def __init__(self, comm: Communicator, virtual_stages: int, micro_batches: int):
        self.comm = comm
        self.ranks = comm.size
        self.virtual_stages = virtual_stages
        tag_bound = comm.tag_bound
        needed = self.tag(micro_batches - 1, virtual_stages - 1, HEADER)
        if tag_bound is not None and needed > tag_bound:
            raise ValueError(f"{micro_batches} micro-batches over {virtual_stages} virtual stages need message tags "
                             f"up to {needed}, above this MPI's limit of {tag_bound}; use fewer micro-batches")
        self._sends: list[Request] = []
        self._receives: dict[tuple[int, int, int], tuple[Request, Array]] = {}
        self.waited = 0.0

    def owner(self, stage: int) -> int:
        """The rank holding virtual stage `stage`."""
        return stage % self.ranks

    def tag(self, micro_batch: int, stage: int, direction: int) -> int:
        """The tag of a message to virtual stage `stage` about `micro_batch`."""
        return (micro_batch * self.virtual_stages + stage) * 3 + direction

    def send(self, array: Array, stage: int, micro_batch: int, direction: int) -> None:
        """Start sending `array` to virtual stage `stage`; the request is kept until it completes."""
        tag = self.tag(micro_batch, stage, direction)
        with span("send", micro_batch=micro_batch, stage=stage, what=("activation", "gradient", "header")[direction]):
            self._sends.append(self.comm.isend(array, self.owner(stage), tag))

    def post_receive(self, buffer: Array, stage: int, micro_batch: int, direction: int) -> None:
        """Post the receive for the message to local virtual stage `stage` (from its neighbour)."""
        source_stage = stage + 1 if direction == GRADIENT else stage - 1
        request = self.comm.irecv(buffer, self.owner(source_stage), self.tag(micro_batch, stage, direction))
        self._receives[(direction, micro_batch, stage)] = (request, buffer)

    def is_posted(self, stage: int, micro_batch: int, direction: int) -> bool:
        return (direction, micro_batch, stage) in self._receives

    def has_arrived(self, stage: int, micro_batch: int, direction: int) -> bool:
        """Whether a posted receive has completed (drives MPI progress; never blocks)."""
        return self._receives[(direction, micro_batch, stage)][0].test()

    def take(self, stage: int, micro_batch: int, direction: int) -> Array:
        """Wait for a posted receive and hand over its buffer."""
        request, buffer = self._receives.pop((direction, micro_batch, stage))
        with span("recv", micro_batch=micro_batch, stage=stage, what=("activation", "gradient", "header")[direction]):
            if not request.done:
                start = time.perf_counter()
                wait_politely([request])
                self.waited += time.perf_counter() - start
        return buffer

    def progress(self) -> None:
        """Let MPI move pending messages along and drop the sends that have completed."""
        if self._sends:
            poll_all(self._sends)
            self._sends = [request for request in self._sends if not request.done]

    def finish(self) -> None:
        """Wait for every send still in flight.

        Raises:
            RuntimeError: when a posted receive was never used (a schedule/executor mismatch).
        """
        start = time.perf_counter()
        wait_politely(self._sends)
        self.waited += time.perf_counter() - start
        self._sends = []
        if self._receives:
            raise RuntimeError(f"pipeline rank {self.comm.rank} finished with unused receives "
                               f"{sorted(self._receives)}; the schedule and the executor disagree")

