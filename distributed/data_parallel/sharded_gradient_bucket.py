"""ShardedGradientBucket: a ZeRO-2 gradient bucket that keeps only this rank's own gradients between backward passes."""
from __future__ import annotations

from typing import Sequence

import numpy

from mpiprop.distributed.data_parallel.buckets import read_has_grad_flags, write_has_grad_flags
from mpiprop.distributed.data_parallel.parameter_shards import rank_counts
from mpiprop.network.layers.parameter import Parameter


class GradientBytes:
    """Bytes of gradient storage held by a group of buckets now, and the most held since `reset_peak`."""

    def __init__(self):
        self.now = 0
        self.peak = 0

    def add(self, count: int) -> None:
        """Count `count` more bytes held (negative: released)."""
        self.now += count
        self.peak = max(self.peak, self.now)

    def reset_peak(self) -> None:
        self.peak = self.now


class ShardedGradientBucket:
    """The gradients of `params`, of which this rank holds only the ones it owns between synchronised backwards.

    Owners are in rank order (`shard_owners`), so the gradient space of the bucket, the
    parameters' elements one after the other, gives each rank one run: `counts[r]` elements
    from `own_start` for this rank. Kept all the time: `own` (this rank's run), `tail` (one
    has-gradient flag per parameter, `flags`) and one zero element. `materialize()`, called before backward first writes a
    gradient of the bucket, makes `full`, the whole gradient space, with `own`'s values in
    their place and zeros elsewhere, and points every parameter's `grad` into it: in new memory,
    or in space the caller lends (a slot of a window shared by the node's ranks, whose bytes its
    owner counts). A reduce-scatter of `full` over the ranks writes the sums of this rank's run
    into `own`; `release()` then points the own parameters' `grad` into `own` and the others' at
    a view of the zero element that reads as zeros of the parameter's shape, and drops `full`.

    So between backwards a rank holds its own gradients (about 1/N of them) and the small `tail`.
    A value written into a gradient it does not own outside a backward cannot be kept there:
    the next `materialize` raises.

    Args:
        params: the bucket's parameters, in the order their gradients become final.
        owners: the owning rank of each of `params` (never decreasing).
        rank: this rank.
        ranks: the number of data-parallel ranks.
        gradient_bytes: the tally of held bytes this bucket adds to and takes from.

    Raises:
        ValueError: for no parameters, or parameters of several dtypes.
    """

    def __init__(self, params: Sequence[Parameter], owners: Sequence[int], rank: int, ranks: int,
                 gradient_bytes: GradientBytes):
        if not params or len({numpy.dtype(p.dtype) for p in params}) != 1:
            raise ValueError(f"a sharded gradient bucket needs parameters of one dtype, got "
                             f"{sorted({str(p.dtype) for p in params})}")
        self.params, self.rank = list(params), rank
        self.owned = [owner == rank for owner in owners]
        self.counts = rank_counts([p.size for p in self.params], owners, ranks)
        self.own_start = sum(self.counts[:rank])
        self.gradient_size = sum(self.counts)
        self.dtype = numpy.dtype(self.params[0].dtype)
        self.own = numpy.zeros(self.counts[rank], dtype=self.dtype)
        self.tail = numpy.zeros(len(self.params), dtype=self.dtype)
        self.flags = self.tail[:len(self.params)]
        self._zero = numpy.zeros(1, dtype=self.dtype)
        self.full: numpy.ndarray | None = None
        self._full_is_lent = False
        self.views: list[numpy.ndarray] = []
        self._gradient_bytes = gradient_bytes
        gradient_bytes.add(self.own.nbytes + self.tail.nbytes + self._zero.nbytes)
        self._take_current_gradients()

    def _take_current_gradients(self) -> None:
        """Keep the gradients accumulated before this bucket existed: in `full` when a rank's non-own one is set."""
        if any(not owned and p.grad.any() for p, owned in zip(self.params, self.owned)):
            current = [p.grad.copy() for p in self.params]
            self.materialize()
            for view, values in zip(self.views, current):
                view[...] = values
            return
        for (start, stop), p, owned in zip(self._spans(), self.params, self.owned):
            if owned:
                self.own[start - self.own_start:stop - self.own_start] = p.grad.ravel()
        self._point_grads_at_own_and_zero()

    def _spans(self) -> list[tuple[int, int]]:
        """Each parameter's [start, stop) in the bucket's gradient space."""
        ends = numpy.cumsum([p.size for p in self.params]).tolist()
        return [(end - p.size, end) for p, end in zip(self.params, ends)]

    @property
    def own_slice(self) -> slice:
        return slice(self.own_start, self.own_start + self.own.size)

    def materialize(self, space: numpy.ndarray | None = None) -> None:
        """Make `full` (own values in place, zeros elsewhere) and point every `grad` into it; nothing if it exists.

        Args:
            space: `gradient_size` elements of the bucket's dtype lent to hold `full` (their bytes
                are not counted here); None for new memory.

        Raises:
            RuntimeError: when a gradient this rank does not own was given a value outside a backward.
        """
        if self.full is not None:
            return
        if self._zero[0] != 0:
            raise RuntimeError(f"a gradient of a parameter that rank {self.rank} does not own was written outside "
                               f"backward (it reads {float(self._zero[0])}); with shard_optimizer_state=2 a rank holds "
                               "only its own parameters' gradients between steps (the others read as zero): write "
                               "gradients only into owned parameters there, or call zero_grad() before the next "
                               "backward")
        if space is None:
            full = numpy.zeros(self.gradient_size, dtype=self.dtype)
        else:
            full = space
            full.fill(0)
        full[self.own_slice] = self.own
        self._hold(full, lent=space is not None)

    def move_into(self, space: numpy.ndarray) -> None:
        """Copy `full`, held in memory of its own, into lent `space` (as `materialize`'s) and free that memory.

        Raises:
            RuntimeError: when `full` does not exist or is already in lent space.
        """
        if self.full is None or self._full_is_lent:
            raise RuntimeError("only a whole gradient space in memory of its own can move into lent space")
        space[...] = self.full
        self._gradient_bytes.add(-self.full.nbytes)
        self._hold(space, lent=True)

    def _hold(self, full: numpy.ndarray, lent: bool) -> None:
        """Make `full` the whole gradient space, every `grad` a view into it; count its bytes unless `lent`."""
        self.full, self._full_is_lent = full, lent
        self.views = [full[start:stop].reshape(p.shape) for (start, stop), p in zip(self._spans(), self.params)]
        for p, view in zip(self.params, self.views):
            p.grad = view
        if not lent:
            self._gradient_bytes.add(full.nbytes)

    @property
    def full_is_lent(self) -> bool:
        """Whether `full` exists in space lent to `materialize` or `move_into`."""
        return self.full is not None and self._full_is_lent

    def release(self) -> None:
        """After the reduce-scatter wrote this rank's sums into `own`: drop `full`, own gradients read from `own`."""
        if self.full is None:
            return
        if not self._full_is_lent:
            self._gradient_bytes.add(-self.full.nbytes)
        self.full, self._full_is_lent = None, False
        self._point_grads_at_own_and_zero()

    def _point_grads_at_own_and_zero(self) -> None:
        self.views = []
        for (start, stop), p, owned in zip(self._spans(), self.params, self.owned):
            if owned:
                view = self.own[start - self.own_start:stop - self.own_start].reshape(p.shape)
            else:
                view = numpy.lib.stride_tricks.as_strided(self._zero, shape=p.shape, strides=(0,) * len(p.shape),
                                                          writeable=True)
            p.grad = view
            self.views.append(view)

    def write_flags(self) -> None:
        """Put each parameter's `has_grad` into `flags`, before they are summed."""
        write_has_grad_flags(self.params, self.flags)

    def read_flags(self) -> None:
        """After the sum: a parameter has a gradient when any rank's flag was set."""
        read_has_grad_flags(self.params, self.flags)

    def scale(self, factor: float) -> None:
        """Multiply the gradients this rank holds by `factor`."""
        values = self.own if self.full is None else self.full
        values *= self.dtype.type(factor)

    def zero(self) -> None:
        """Reset the gradients and flags to zero."""
        for values in (self.own, self.tail, self._zero) + (() if self.full is None else (self.full,)):
            values.fill(0)

    @property
    def nbytes(self) -> int:
        """Bytes of the whole bucket: every rank's gradients and the flags."""
        return (self.gradient_size + self.tail.size) * self.dtype.itemsize

    @property
    def held_bytes(self) -> int:
        """Bytes of gradient storage this bucket holds now: own gradients, tail, the zero element and `full`
        (unless lent)."""
        held = self.own.nbytes + self.tail.nbytes + self._zero.nbytes
        return int(held + (0 if self.full is None or self._full_is_lent else self.full.nbytes))

    def rebound_parameter(self) -> Parameter | None:
        """The first parameter whose `grad` is no longer this bucket's view (e.g. after `p.to(...)`), if any."""
        for p, view in zip(self.params, self.views):
            if p.grad is not view:
                return p
        return None
