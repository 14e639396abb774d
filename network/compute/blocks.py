"""Row blocks that fit a core's cache, for chains of elementwise passes over large arrays on the CPU.

numpy makes one pass over memory per operation. A chain of them over an array larger than the
cache reads and writes main memory at every step; done block by block, each block stays in the
cache for the whole chain (the tanh GELU's 8 passes over a (2048, 512) float32 activation take
about 30% less time). On the GPU one block is the whole array.
"""
from __future__ import annotations

from typing import Iterator

import numpy

from mpiprop.network.backend import Array, get_array_module

BLOCK_BYTES = 256 * 1024  # one block of each array in a chain of three or four stays within a core's L2 cache


def as_rows(x: Array) -> Array:
    """x as a 2-D (rows, last axis) array, a view where it can be one (a 0-d or 1-d x is one row)."""
    return x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)


def row_blocks(rows: Array) -> Iterator[slice]:
    """Slices of `rows`' first axis, each about BLOCK_BYTES of it (numpy), or one slice of all of it (cupy)."""
    count = rows.shape[0]
    if get_array_module(rows) is not numpy or rows.nbytes <= BLOCK_BYTES:
        yield slice(0, count)
        return
    step = max(1, BLOCK_BYTES // max(1, rows.itemsize * rows.shape[1]))
    for start in range(0, count, step):
        yield slice(start, start + step)
