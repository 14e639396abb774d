"""ParameterAllgather: every rank sends its own parameters' values to all, bucket by bucket (after a sharded step)."""
from __future__ import annotations

from typing import Sequence

import numpy

from mpiprop.distributed.data_parallel.parameter_shards import rank_counts
from mpiprop.distributed.reliability.waits import waiting_in
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.layers.parameter import Parameter


class ParameterAllgather:
    """Copies each rank's own parameters into every other rank's, one group of parameters at a time.

    A group (a gradient bucket's parameters: one dtype) goes through one flat staging buffer,
    as large as the largest group, with one `allgatherv`; the owners inside a group must be in
    rank order (as `shard_owners` gives them).

    Args:
        groups: lists of parameters, each of one dtype.
        owner_of: the owning rank of every parameter, by `id`.
        comm: the data-parallel ranks.
    """

    def __init__(self, groups: Sequence[Sequence[Parameter]], owner_of: dict[int, int], comm: Communicator):
        self.groups = [list(group) for group in groups]
        self.comm, self.owner_of = comm, dict(owner_of)
        self.counts = [rank_counts([p.size for p in group], [owner_of[id(p)] for p in group], comm.size)
                       for group in self.groups]
        largest = max((sum(counts) for counts in self.counts), default=0)
        dtypes = {group[0].dtype for group in self.groups}
        self._staging = {dtype: numpy.empty(largest, dtype=dtype) for dtype in dtypes}

    def run(self) -> None:
        """Every rank's parameters take their owners' values. Collective."""
        for index, (group, counts) in enumerate(zip(self.groups, self.counts)):
            staging = self._staging[group[0].dtype][:sum(counts)]
            offset, offsets = 0, []
            for p in group:
                offsets.append(offset)
                offset += p.size
            own = [(p, start) for p, start in zip(group, offsets) if self.owner_of[id(p)] == self.comm.rank]
            for p, start in own:
                staging[start:start + p.size] = p.data.ravel()
            with waiting_in(f"allgather of the parameters of bucket {index}"):
                self.comm.allgatherv(staging, counts)
            for p, start in zip(group, offsets):
                if self.owner_of[id(p)] != self.comm.rank:
                    p.data[...] = staging[start:start + p.size].reshape(p.shape)
