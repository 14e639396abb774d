"""Matrix products for the layers: through MKL where it is installed (see mpiprop.network.mkl_gemm), else plain `@`."""
from __future__ import annotations

import numpy

from mpiprop.network import mkl_gemm
from mpiprop.network.backend import Array


def matmul(a: Array, b: Array, *, transpose_b: bool = False) -> Array:
    """a @ b, or a @ b.T with `transpose_b`, as a new array."""
    if type(a) is numpy.ndarray and a.ndim == 2 and b.ndim == 2 and mkl_gemm.available():
        out = numpy.empty((a.shape[0], b.shape[0] if transpose_b else b.shape[1]), dtype=a.dtype)
        if mkl_gemm.gemm(a, b, out, trans_b=transpose_b):
            return out
    return a @ (b.T if transpose_b else b)


def mkl_add_matmul_(out: Array, a: Array, b: Array) -> bool:
    """out += a @ b through MKL, where `a` and `b` are C-contiguous or transposes of such; True when done."""
    if type(out) is not numpy.ndarray or not mkl_gemm.available():
        return False
    (first, transpose_first), (second, transpose_second) = _as_stored(a), _as_stored(b)
    return mkl_gemm.gemm(first, second, out, trans_a=transpose_first, trans_b=transpose_second, beta=1.0)


def _as_stored(matrix: Array) -> tuple[Array, bool]:
    """`matrix` as a C-contiguous array and whether it must be read transposed."""
    if matrix.ndim == 2 and not matrix.flags.c_contiguous and matrix.T.flags.c_contiguous:
        return matrix.T, True
    return matrix, False
