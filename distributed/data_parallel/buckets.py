"""Gradient buckets: flat buffers that the parameters' gradients are views of, so no copy precedes MPI."""
from __future__ import annotations

from typing import Sequence

import numpy

from mpiprop.network.backend import Array, device_of, get_array_module, to_numpy
from mpiprop.network.layers.parameter import Parameter

DEFAULT_BUCKET_CAP_MB = 4.0


def assign_buckets(params: Sequence[Parameter], cap_bytes: int) -> list[list[Parameter]]:
    """Group `params`, in the given order, into consecutive buckets of about `cap_bytes` each.

    A bucket is closed once it holds `cap_bytes` or more (see `bucket_lengths`), so a parameter
    larger than the cap gets a bucket of its own; a change of dtype or device also starts a new
    bucket (one flat buffer holds one dtype on one device).

    Raises:
        ValueError: for a cap below one byte.
    """
    buckets: list[list[Parameter]] = []
    for run in _compatible_runs(params):
        start = 0
        for length in bucket_lengths([p.size * p.dtype.itemsize for p in run], cap_bytes):
            buckets.append(run[start:start + length])
            start += length
    return buckets


def bucket_lengths(byte_sizes: Sequence[int], cap_bytes: int) -> list[int]:
    """How many consecutive items of `byte_sizes` bytes each bucket takes: a bucket is closed once it
    holds `cap_bytes` or more.

    Raises:
        ValueError: for a cap below one byte.
    """
    if cap_bytes < 1:
        raise ValueError(f"bucket cap must be at least 1 byte, got {cap_bytes}; pass e.g. bucket_cap_mb=4")
    lengths: list[int] = []
    filled = cap_bytes
    for size in byte_sizes:
        if filled >= cap_bytes:
            lengths.append(0)
            filled = 0
        lengths[-1] += 1
        filled += size
    return lengths


def _compatible_runs(params: Sequence[Parameter]) -> list[list[Parameter]]:
    """`params` cut wherever the dtype or device changes."""
    runs: list[list[Parameter]] = []
    for p in params:
        if not runs or not _compatible(runs[-1][-1], p):
            runs.append([])
        runs[-1].append(p)
    return runs


def bucket_size(params: Sequence[Parameter]) -> int:
    """Elements of the flat buffer that holds the gradients of `params` and a has-gradient flag for each."""
    return sum(p.size for p in params) + len(params)


def _compatible(a: Parameter, b: Parameter) -> bool:
    return a.dtype == b.dtype and device_of(a.data) == device_of(b.data)


class GradientBucket:
    """One flat gradient buffer; each parameter's `grad` is rebound, once, to a view into it.

    The buffer is made here, or given (`bucket_size(params)` elements of the parameters'
    dtype, e.g. in memory shared with other ranks).

    The current gradient values are copied into the buffer, so nothing accumulated so far is
    lost. Backward passes keep adding into `p.grad` in place, which writes the buffer. The last
    `len(params)` elements, `flags`, carry each parameter's `has_grad` (1 or 0) through the
    same sum over ranks: a parameter has a gradient after the sum when it had one on any rank.
    """

    def __init__(self, params: Sequence[Parameter], buffer: Array | None = None):
        if not params:
            raise ValueError("a gradient bucket needs at least one parameter")
        first = params[0].data
        self.params = list(params)
        if buffer is None:
            buffer = get_array_module(first).zeros(bucket_size(params), dtype=first.dtype)
        self.buffer: Array = buffer
        self.views: list[Array] = []
        offset = 0
        for p in self.params:
            view = self.buffer[offset:offset + p.size].reshape(p.shape)
            view[...] = p.grad
            p.grad = view
            self.views.append(view)
            offset += p.size
        self.flags: Array = self.buffer[offset:offset + len(self.params)]

    def write_flags(self) -> None:
        """Put each parameter's `has_grad` into `flags`, before the buffer is summed."""
        write_has_grad_flags(self.params, self.flags)

    def read_flags(self) -> None:
        """After the sum: a parameter has a gradient when any rank's flag was set."""
        read_has_grad_flags(self.params, self.flags)

    def scale(self, factor: float) -> None:
        """Multiply the buffer by `factor` (the flags too: `write_flags` rewrites them before a sum)."""
        self.buffer *= self.buffer.dtype.type(factor)

    def zero(self) -> None:
        """Reset the gradients and flags to zero."""
        self.buffer.fill(0)

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes)

    @property
    def held_bytes(self) -> int:
        """Bytes of gradient storage this bucket holds now: its whole buffer."""
        return int(self.buffer.nbytes)

    def rebound_parameter(self) -> Parameter | None:
        """The first parameter whose `grad` is no longer this bucket's view (e.g. after `p.to(...)`), if any."""
        for p, view in zip(self.params, self.views):
            if p.grad is not view:
                return p
        return None


def write_has_grad_flags(params: Sequence[Parameter], flags: Array) -> None:
    """Put each parameter's `has_grad` (1 or 0) into `flags`, before they are summed over ranks."""
    if all(p.has_grad for p in params):
        flags.fill(1)
        return
    local = numpy.array([p.has_grad for p in params], dtype=flags.dtype)
    flags[...] = get_array_module(flags).asarray(local)


def read_has_grad_flags(params: Sequence[Parameter], flags: Array) -> None:
    """After the sum: a parameter has a gradient when any rank's flag was set (no read when this rank's all were)."""
    if all(p.has_grad for p in params):
        return
    for p, summed in zip(params, to_numpy(flags)):
        p.has_grad = bool(summed > 0)
