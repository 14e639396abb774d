"""ShardWeight: how much a rank's gradients count, its share of the rows of the global batch."""
from __future__ import annotations

import numpy

from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.request import Request


class ShardWeight:
    """This rank's rows over the rows of all ranks, learnt while the forward runs.

    A rank whose loss is the mean over its n_r rows contributes n_r / N of the gradient of the
    mean loss over all N rows of the global batch: with shards of 4, 3 and 3 rows, plain
    averaging (1/3 each) would be off. `start(rows)` begins one small non-blocking allreduce
    of every rank's rows (collective); `take()` waits for it and returns the weight.

    Args:
        comm: the data-parallel ranks.
    """

    def __init__(self, comm: Communicator):
        self.comm = comm
        self._rows = 0
        self._every_rank = numpy.zeros(comm.size, dtype=numpy.int64)
        self._request: Request | None = None

    def start(self, rows: int) -> None:
        """Begin sharing this rank's `rows` (a forward not followed by a backward is superseded)."""
        if self._request is not None:
            self._request.wait()
        self._rows = rows
        self._every_rank = numpy.zeros(self.comm.size, dtype=numpy.int64)
        self._every_rank[self.comm.rank] = rows
        self._request = self.comm.iallreduce(self._every_rank, "sum")

    def take(self) -> float:
        """rows / (rows of all ranks) of the last `start`, or 1 / ranks when nothing was started since the last take.

        Raises:
            ValueError: on every rank, when no rank had any rows.
        """
        if self._request is None:
            return 1.0 / self.comm.size
        self._request.wait()
        self._request = None
        total = int(self._every_rank.sum())
        if total == 0:
            raise ValueError(f"the data-parallel batch is empty on all {self.comm.size} ranks; give some rank rows")
        return self._rows / total
