"""A tensor-parallel group whose collectives stay on this rank: a split layout's own work, without its communication.

Tensor parallelism does more than 1/T of one process's work per rank (the LayerNorms and residual
sums run on every rank, the products are narrower), and it communicates. Timing the same split with
this group instead of the real one measures the first alone: the schedule's bound, as the bubble is
a pipeline's. Timing only: what the model computes with it is wrong.
"""
from __future__ import annotations

from typing import Sequence

from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.request import Request
from mpiprop.network.backend import Array


class CommunicationFree(Communicator):
    """A Communicator whose collectives on arrays act as if every rank held this rank's data, and wait for nobody.

    An allreduce leaves the array as it is; a reduce-scatter copies this rank's share of the array
    out; an allgather copies this rank's part into the other ranks' places (the memory traffic the
    real ones make, without the exchange), so every rank's part must have one size: the rows of
    each micro-batch must split evenly over the ranks. Object collectives (the layouts' set-up
    checks) and point-to-point messages still go through MPI. Build it over a group:
    CommunicationFree(group, clone=False).
    """

    def iallreduce(self, array: Array, op: str = "sum") -> Request:
        return Request(self._mpi.REQUEST_NULL)

    def ireduce_scatter(self, array: Array, part: Array, counts: Sequence[int], op: str = "sum") -> Request:
        start = sum(counts[:self.rank])
        part[...] = array[start:start + counts[self.rank]]
        return Request(self._mpi.REQUEST_NULL)

    def allgatherv(self, array: Array, counts: Sequence[int]) -> Array:
        if len(set(counts)) != 1:
            raise ValueError(f"a communication-free allgather needs parts of one size on every rank, got "
                             f"{list(counts)}; give the layout a batch whose rows split evenly over the ranks")
        count = counts[0]
        own = array[self.rank * count:(self.rank + 1) * count]
        for rank in range(len(counts)):
            if rank != self.rank:
                array[rank * count:(rank + 1) * count] = own
        return array
