"""SharedExchange: a communicator's sums and gathers of large numpy arrays through a window its ranks share.

MPI's collectives between the processes of one node copy each array into shared cells and the
result back out. Here each rank copies its array once into its own part of a window that every
rank of the communicator can read, waits at a barrier, and reads what it needs straight from the
others' parts: an allreduce is then a sum of the parts, a reduce-scatter a sum of slices of
them, an allgather a copy of slices. For tensor parallelism's activations of a few hundred KB to
a few MB, where MPICH's collectives take 0.2 to 0.35 ms inside a training step, the GPT step on
2 tensor ranks runs 3 to 4% faster (examples/benchmarks/bench_models.py).

The window holds two slots per rank, used in turn: a rank writes a slot only after the barrier
of the collective that followed the last one to read it, so one barrier per collective keeps
readers and writers apart. Every rank sums in rank order, so an allreduce gives every rank the
same bits. The window grows (collectively: every rank asks for the same size in the same
collective) to the largest array seen, and gives way to MPI when /dev/shm lacks room.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Sequence

import numpy

from mpiprop.distributed.reliability.waits import waiting_in
from mpiprop.distributed.transport.shared_memory_room import room_shortage
from mpiprop.distributed.transport.shared_window import SharedWindow

if TYPE_CHECKING:
    from mpiprop.distributed.transport.communicator import Communicator

SMALLEST_BYTES = 16 * 1024  # below this MPI's own collectives are as fast
SLOTS = 2
ALIGNMENT = 64  # bytes: each slot starts on a cache line


class SharedExchange:
    """The array collectives of `comm`, whose ranks all share one node, through a window of theirs.

    Each method returns False, having done nothing, when /dev/shm has no room for the window (every
    rank alike; rank 0 warns once), so that the communicator takes MPI's collective instead.
    """

    def __init__(self, comm: "Communicator"):
        self.comm = comm
        self._window: SharedWindow | None = None
        self._slot_bytes = 0
        self._turn = 0
        self._no_room = False

    def takes(self, array: Any, op: Any = "sum") -> bool:
        """Whether this exchange carries `array` instead of MPI: a sum (or a gather) of a contiguous numpy array
        of numbers, of SMALLEST_BYTES or more. Every rank answers alike for arrays of one size."""
        return (type(array) is numpy.ndarray and op == "sum" and array.dtype.kind in "fiuc"
                and array.nbytes >= SMALLEST_BYTES and array.flags.c_contiguous and not self._no_room)

    def allreduce(self, array: numpy.ndarray, what: str) -> bool:
        """`array` summed over the ranks, in place: every rank adds up every rank's slot, in rank order."""
        slots = self._publish(array, what)
        if slots is None:
            return False
        _sum_into(array.reshape(-1), slots)
        return True

    def reduce_scatter(self, array: numpy.ndarray, part: Any, counts: Sequence[int], what: str) -> bool:
        """`array` summed over the ranks, rank r receiving its `counts[r]` elements, in rank order, into `part`."""
        start, count = _place(array, counts, self.comm.rank)
        if type(part) is not numpy.ndarray or part.size != count or part.dtype != array.dtype:
            raise ValueError(f"rank {self.comm.rank}'s part of the reduce-scatter must be a numpy array of "
                             f"counts[{self.comm.rank}] = {count} elements of {array.dtype}, got "
                             f"{getattr(part, 'size', part)!r} of {getattr(part, 'dtype', type(part).__name__)}")
        slots = self._publish(array, what)
        if slots is None:
            return False
        total = part.reshape(-1) if part.flags.c_contiguous else numpy.empty(count, array.dtype)
        _sum_into(total, [slot[start:start + count] for slot in slots])
        if not part.flags.c_contiguous:
            part[...] = total.reshape(part.shape)
        return True

    def allgatherv(self, array: numpy.ndarray, counts: Sequence[int], what: str) -> bool:
        """Rank r's `counts[r]` elements at their place in `array` (ranks in order), on every rank, in place."""
        _place(array, counts, self.comm.rank)
        slots = self._publish(array, what)
        if slots is None:
            return False
        flat, start = array.reshape(-1), 0
        for rank, count in enumerate(counts):
            if rank != self.comm.rank:
                flat[start:start + count] = slots[rank][start:start + count]
            start += count
        return True

    def _publish(self, array: numpy.ndarray, what: str) -> list[numpy.ndarray] | None:
        """Copy `array` into this rank's next slot and meet the others; every rank's slot, as a flat array of
        `array`'s dtype and size, or None when there is no room for the window."""
        if not self._room_for(array.nbytes):
            return None
        self._turn = (self._turn + 1) % SLOTS
        offset = self._turn * self._slot_bytes
        slots = [numpy.frombuffer(self._window.memory(rank), dtype=array.dtype, count=array.size, offset=offset)
                 for rank in range(self.comm.size)]
        slots[self.comm.rank][...] = array.reshape(-1)
        self._meet(what)
        return slots

    def _meet(self, what: str) -> None:
        """A barrier, with the window's loads and stores ordered around it."""
        self._window.sync()
        with waiting_in(what, self.comm.world_ranks):
            self.comm.mpi_comm.Barrier()
        self._window.sync()

    def _room_for(self, nbytes: int) -> bool:
        """Grow the window to slots of `nbytes` when they are smaller (collective); False when /dev/shm lacks
        the room, from then on."""
        if nbytes <= self._slot_bytes:
            return True
        slot_bytes = -(-max(nbytes, 2 * self._slot_bytes) // ALIGNMENT) * ALIGNMENT
        shortage = room_shortage(self.comm, self.comm.size * SLOTS * slot_bytes, "the shared slots of the "
                                 "tensor-parallel activations need", "summing them with MPI instead",
                                 "pass tensor_parallel_group(..., shared_memory=False)")
        if shortage is not None:
            self._no_room = True
            if self.comm.is_main:
                warnings.warn(shortage, RuntimeWarning, stacklevel=6)
            return False
        if self._window is not None:
            self._window.free()
        self._window = self.comm.allocate_shared(SLOTS * slot_bytes)
        self._slot_bytes = slot_bytes
        return True


def _place(array: numpy.ndarray, counts: Sequence[int], rank: int) -> tuple[int, int]:
    """Where rank `rank`'s elements start in `array`, and how many they are; checks that `counts` covers it."""
    if len(counts) <= rank or sum(counts) != array.size:
        raise ValueError(f"the counts {list(counts)} must give every rank's elements and add up to the array's "
                         f"{array.size}")
    return sum(counts[:rank]), counts[rank]


def _sum_into(out: numpy.ndarray, pieces: list[numpy.ndarray]) -> None:
    """out = the pieces summed in rank order (the same order on every rank)."""
    numpy.add(pieces[0], pieces[1], out=out) if len(pieces) > 1 else numpy.copyto(out, pieces[0])
    for piece in pieces[2:]:
        out += piece
