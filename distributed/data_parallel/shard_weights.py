"""ShardWeight: how much a rank's gradients count, its share of the rows of the global batch."""
from __future__ import annotations

import numpy

from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.request import Request


class ShardWeight:
    """This rank's rows over the rows of all ranks: learnt once, then checked in the gradients' sum.

    A rank whose loss is the mean over its n_r rows contributes n_r / N of the gradient of the
    mean loss over all N rows of the global batch: with shards of 4, 3 and 3 rows, plain
    averaging (1/3 each) would be off. The ranks exchange their rows (one small allreduce) the
    first time, and whenever asked to (`exchange`); otherwise each rank weights its rows by the
    total it last learnt (`total`, the same on every rank) and the caller sums every rank's rows
    along with the gradients: `correction` of that sum then says by how much the summed
    gradients must be multiplied to be the global-batch mean (1.0 unless the total changed,
    as on the short last batch of an epoch), and learns the new total.

    Args:
        comm: the data-parallel ranks.
    """

    def __init__(self, comm: Communicator):
        self.comm = comm
        self.total: int | None = None
        self._rows: int | None = None
        self._every_rank = numpy.zeros(comm.size, dtype=numpy.int64)
        self._request: Request | None = None

    def start(self, rows: int, exchange: bool) -> None:
        """Note this rank's `rows` for the next `take`; collective when `exchange` or no total is known
        yet (every rank alike): the rows are then shared, in the background. A forward not followed by a
        backward is superseded."""
        self._finish_exchange()
        self._rows = rows
        if exchange or self.total is None:
            self._start_exchange(rows)

    def take(self, exchange: bool) -> tuple[float, int | None]:
        """(this rank's weight, its rows) for the backward of the last `start`; (1 / ranks, None) when
        nothing was started since the last take.

        Args:
            exchange: the rows must be exchanged, not assumed (collective, every rank alike): when the
                summed gradients will not carry the rows to `correction`.

        Raises:
            ValueError: on every rank, when no rank had any rows.
        """
        if self._rows is None:
            return 1.0 / self.comm.size, None
        if exchange and self._request is None:
            self._start_exchange(self._rows)
        self._finish_exchange()
        rows, self._rows = self._rows, None
        return rows / self.total, rows

    def correction(self, rows: int, summed_rows: int, exact_below: int) -> float:
        """The factor that makes gradients weighted by `total` the global-batch mean, once every rank's
        rows, summed with them, give `summed_rows`; learns the new total. Collective when that sum may be
        inexact (`exact_below` or more): the ranks then exchange their `rows` (this rank's, from `take`).

        Raises:
            ValueError: on every rank, when no rank had any rows.
        """
        if summed_rows == self.total:
            return 1.0
        assumed = self.total
        if summed_rows >= exact_below:
            self._start_exchange(rows)
            self._finish_exchange()
        else:
            self.total = self._checked(summed_rows)
        return assumed / self.total

    def _start_exchange(self, rows: int) -> None:
        self._every_rank = numpy.zeros(self.comm.size, dtype=numpy.int64)
        self._every_rank[self.comm.rank] = rows
        self._request = self.comm.iallreduce(self._every_rank, "sum")

    def _finish_exchange(self) -> None:
        if self._request is None:
            return
        self._request.wait()
        self._request = None
        self.total = self._checked(int(self._every_rank.sum()))

    def _checked(self, total: int) -> int:
        if total == 0:
            raise ValueError(f"the data-parallel batch is empty on all {self.comm.size} ranks; give some rank rows")
        return total
