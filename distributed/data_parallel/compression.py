"""Gradient compression: how a bucket travels between ranks, as an object that says what it preserves."""
from __future__ import annotations

import math

import numpy

from mpiprop.network.backend import Array

FLOAT16_HEADROOM = 2.0 ** 15  # half of float16's largest value, so rounding in partial sums cannot reach inf


class NoCompression:
    """Buckets travel as they are: sums are exact to the dtype, and memory shared by a node's ranks may hold them."""

    name = "none"
    exact = True
    shared_memory = True

    def needs_scale(self) -> bool:
        """Whether `encode` needs the ranks' agreed scale (one small allreduce of each bucket's largest magnitude)."""
        return False

    def scale_for(self, largest: float, ranks: int) -> float:
        return 1.0

    def encode(self, buffer: Array, scale: float) -> Array:
        """What goes over the wire for `buffer`."""
        return buffer

    def decode(self, wire: Array, buffer: Array, scale: float) -> None:
        """Write the summed `wire` back into `buffer`."""
        if wire is not buffer:
            buffer[...] = wire

    def __repr__(self) -> str:
        return "NoCompression()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


class Float16Compression(NoCompression):
    """A float16 copy of each bucket goes over the wire; the sum is cast back (about 3 significant digits).

    The copy is first multiplied by a power of two that the ranks agree on, chosen so that the sum of all
    ranks' largest magnitudes fits half of float16's range (`headroom`): large gradients do not overflow
    to inf and small ones do not flush to zero (values below 2**-24 of the bucket's largest still do).
    Non-finite gradients stay non-finite. Sums are not exact, and shared memory cannot carry it (the
    buckets would be summed there uncompressed).

    Args:
        headroom: the largest summed magnitude the scaled copy may reach.
    """

    name = "float16"
    exact = False
    shared_memory = False

    def __init__(self, headroom: float = FLOAT16_HEADROOM):
        if not 0 < headroom <= float(numpy.finfo(numpy.float16).max):
            raise ValueError(f"Float16Compression headroom must be in (0, 65504], got {headroom!r}")
        self.headroom = float(headroom)

    def needs_scale(self) -> bool:
        return True

    def scale_for(self, largest: float, ranks: int) -> float:
        """The power of two that makes `ranks` times `largest` fit the headroom (1 for zero or non-finite)."""
        if not math.isfinite(largest) or largest == 0.0:
            return 1.0
        return 2.0 ** math.floor(math.log2(self.headroom / (largest * ranks)))

    def encode(self, buffer: Array, scale: float) -> Array:
        return (buffer * buffer.dtype.type(scale)).astype(numpy.float16)

    def decode(self, wire: Array, buffer: Array, scale: float) -> None:
        buffer[...] = wire
        buffer *= buffer.dtype.type(1.0 / scale)

    def __repr__(self) -> str:
        return f"Float16Compression(headroom={self.headroom:g})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.headroom == self.headroom

    def __hash__(self) -> int:
        return hash((type(self), self.headroom))


COMPRESSION_NAMES = {None: NoCompression, "none": NoCompression, "float16": Float16Compression}


def as_compression(compression: "NoCompression | str | None") -> NoCompression:
    """The compression object for `compression`: an object as it is, None for NoCompression(), and the
    names "float16" (Float16Compression()) and "none" kept for compatibility.

    Raises:
        ValueError: for another name or type.
    """
    if isinstance(compression, NoCompression):
        return compression
    if isinstance(compression, (str, type(None))) and compression in COMPRESSION_NAMES:
        return COMPRESSION_NAMES[compression]()
    raise ValueError(f"unknown gradient compression {compression!r}; pass NoCompression(), Float16Compression() "
                     "(or the name 'float16'), or None")
