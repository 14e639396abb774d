"""SharedMemoryParameterAllgather: every rank reads its peers' own parameters from memory the node's ranks share."""
from __future__ import annotations

from typing import Sequence

import numpy

from mpiprop.distributed.data_parallel.bucket_allreduce_shared import ALIGNMENT
from mpiprop.distributed.reliability.timeline import span
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.shared_memory_room import room_shortage
from mpiprop.network.layers.parameter import Parameter


class SharedMemoryParameterAllgather:
    """Copies each rank's own parameters into every other rank's, through a window shared on one node.

    Each rank's part of the window holds its own parameters (about 1/N of the model). `run()`
    waits until every rank has read the previous values, writes this rank's parameters into its
    part, waits until every rank has written, and copies the peers' parameters out of theirs:
    two barriers and no message, where MPI's allgather would copy everything twice. Construction
    is collective; only for ranks on one node (see `node_groups`).

    Args:
        params: every parameter of the model.
        owner_of: the owning rank of every parameter, by `id`.
        comm: the data-parallel ranks, all on one node.
    """

    def __init__(self, params: Sequence[Parameter], owner_of: dict[int, int], comm: Communicator):
        self.comm = comm
        self.params = list(params)
        self.owner_of = dict(owner_of)
        offsets, used = _segments(self.params, self.owner_of, comm.size)
        self._window = comm.allocate_shared(max(used[comm.rank], ALIGNMENT))
        memories = [self._window.memory(rank) for rank in range(comm.size)]
        self._views = [numpy.frombuffer(memories[self.owner_of[id(p)]], dtype=p.dtype, count=p.size,
                                        offset=offsets[id(p)]).reshape(p.shape) for p in self.params]

    def run(self) -> None:
        """Every rank's parameters take their owners' values. Collective."""
        with span("shared-memory parameter allgather"):
            self._barrier()
            for p, view in zip(self.params, self._views):
                if self.owner_of[id(p)] == self.comm.rank:
                    view[...] = p.data
            self._barrier()
            for p, view in zip(self.params, self._views):
                if self.owner_of[id(p)] != self.comm.rank:
                    p.data[...] = view

    def _barrier(self) -> None:
        self._window.sync()
        self.comm.barrier()
        self._window.sync()


def parameter_window_shortage(params: Sequence[Parameter], owner_of: dict[int, int], comm: Communicator) -> str | None:
    """Why the window for the parameters would not fit on some rank's node, or None when it fits. Collective."""
    needed = sum(_segments(params, owner_of, comm.size)[1])
    return room_shortage(comm, needed, "the shared copy of the parameters needs",
                         "giving the updated parameters to the ranks with MPI's allgather instead",
                         "pass DataParallel(..., shared_memory=False)")


def _segments(params: Sequence[Parameter], owner_of: dict[int, int], ranks: int) -> tuple[dict[int, int], list[int]]:
    """Each parameter's byte offset in its owner's part of the window (by `id`), and each rank's bytes."""
    offsets, used = {}, [0] * ranks
    for p in params:
        owner = owner_of[id(p)]
        offsets[id(p)] = used[owner]
        used[owner] += -(-p.data.nbytes // ALIGNMENT) * ALIGNMENT
    return offsets, used
