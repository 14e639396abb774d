"""shard_weight: how much a rank's gradients count, its share of the rows of the global batch."""
from __future__ import annotations

import numpy

from mpiprop.distributed.transport.communicator import Communicator


def shard_weight(rows: int, comm: Communicator) -> float:
    """This rank's `rows` over the rows of all ranks together; collective (one small allreduce).

    A rank whose loss is the mean over its n_r rows contributes n_r / N of the gradient of the
    mean loss over all N rows of the global batch: with shards of 4, 3 and 3 rows, plain
    averaging (1/3 each) would be off.

    Args:
        rows: the rows of this rank's batch.
        comm: the data-parallel ranks.

    Returns:
        rows / (rows summed over the ranks of `comm`).

    Raises:
        ValueError: on every rank, when no rank has any rows.
    """
    every_rank = numpy.zeros(comm.size, dtype=numpy.int64)
    every_rank[comm.rank] = rows
    total = int(comm.allreduce(every_rank).sum())
    if total == 0:
        raise ValueError(f"the data-parallel batch is empty on all {comm.size} ranks; give some rank rows")
    return rows / total
