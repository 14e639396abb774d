"""ShardWeight: how much a rank's gradients count, its share of the global batch's loss denominator."""
from __future__ import annotations

import math

import numpy

from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.request import Request
from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.layers.losses import Loss
from mpiprop.network.training.non_finite import is_finite


class ShardWeight:
    """This rank's share of the denominator of the global batch's mean loss, summed over the ranks in the background.

    A rank whose loss is the mean over its shard (its rows, elements, or the total class weight of
    its kept targets: `Loss.denominator`) contributes local / global of the gradient of torch's mean
    loss over the global batch: with shards of 4, 3 and 3 rows, or with ignored targets falling
    unevenly, plain averaging (1/3 each) would be off. `start` sends this rank's denominator (and its
    loss, for the global mean) in one small non-blocking allreduce; `take` waits for it.

    Args:
        comm: the data-parallel ranks.
    """

    def __init__(self, comm: Communicator):
        self.comm = comm
        self._sent: numpy.ndarray | None = None
        self._request: Request | None = None
        self._local = 0.0
        self._mean = True
        self._rows = False

    def start(self, local: float, value: float = 0.0, *, mean: bool = True, rows: bool = False) -> None:
        """Send this rank's denominator `local` and loss `value` for the next `take`; collective (every rank
        alike). A start not followed by a take is superseded.

        Args:
            local: this rank's loss denominator (its rows where the loss is not known).
            value: this rank's loss.
            mean: whether the loss is a mean (weight local / global); False for a sum (weight 1).
            rows: `local` counts rows: a global total of zero is an error rather than NaN.
        """
        self._wait()
        self._local, self._mean, self._rows = float(local), mean, rows
        self._sent = numpy.array([self._local, value * self._local if mean else value], dtype=numpy.float64)
        self._request = self.comm.iallreduce(self._sent, "sum")

    @property
    def pending(self) -> bool:
        """Whether a start awaits its take."""
        return self._sent is not None

    def take(self) -> tuple[float, float]:
        """(this rank's weight, the global loss: the mean over the global batch, or the sum) for the last
        `start`; (1 / ranks, NaN) when nothing was started since the last take.

        Raises:
            ValueError: on every rank, when the ranks' rows sum to zero.
        """
        if self._sent is None:
            return 1.0 / self.comm.size, math.nan
        self._wait()
        (total, value_sum), self._sent = self._sent, None
        if not self._mean:
            return 1.0, float(value_sum)
        if total == 0:
            if self._rows:
                raise ValueError(f"the data-parallel batch is empty on all {self.comm.size} ranks; give some rank rows")
            return math.nan, math.nan
        return self._local / float(total), float(value_sum / total)

    def _wait(self) -> None:
        if self._request is not None:
            self._request.wait()
            self._request = None


def loss_gradient_and_denominator(loss_fn: Loss, output: Array, y: Array) -> tuple[float, Array, float]:
    """(loss, its output gradient, its denominator); NaN and a NaN gradient for a non-finite output or loss, and 0
    with a zero gradient for a mean over nothing (every target ignored)."""
    local = loss_fn.denominator(y)
    if loss_fn.reduction != "sum" and local == 0:
        return 0.0, get_array_module(output).zeros_like(output), 0.0
    if is_finite(output):
        value = loss_fn(output, y)
        if math.isfinite(value):
            return value, loss_fn.backward(), local
    return math.nan, get_array_module(output).full_like(output, math.nan), local
