"""Matrix products for the layers: in the current precision, through MKL where it is installed, else plain `@`."""
from __future__ import annotations

import numpy

from mpiprop.network.compute import mkl_gemm
from mpiprop.network.backend import Array, get_array_module, tensor_core_float32
from mpiprop.network.compute.precision import Precision, current_precision, round_for_product
from mpiprop.network.compute.threads import run_product


def matmul(a: Array, b: Array, *, transpose_b: bool = False, out: Array | None = None) -> Array:
    """a @ b, or a @ b.T with `transpose_b`, in the current precision (`using_precision`): a new array, or
    written into `out` (which may be a strided view: numpy's BLAS writes a view with unit column stride
    in place) and returned."""
    precision = current_precision()
    if out is not None:
        if type(out) is numpy.ndarray and not (precision.mixed or precision.tf32):
            return numpy.matmul(a, b.T if transpose_b else b, out=out)
        out[...] = matmul(a, b, transpose_b=transpose_b)
        return out
    if precision.mixed or precision.tf32:
        return product_in_precision(a, b.T if transpose_b else b, precision)
    if type(a) is not numpy.ndarray:
        return a @ (b.T if transpose_b else b)
    columns = b.shape[0] if transpose_b else b.shape[-1]
    return run_product(a.size * columns, lambda: _numpy_matmul(a, b, transpose_b))


def _numpy_matmul(a: numpy.ndarray, b: numpy.ndarray, transpose_b: bool) -> numpy.ndarray:
    if a.ndim == 2 and b.ndim == 2 and mkl_gemm.available():
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


def product_in_precision(a: Array, b: Array, precision: Precision) -> Array:
    """a @ b as `precision` computes it, returned in the inputs' dtype.

    Mixed modes round both inputs to half precision, accumulate in float32 and round the product to
    half precision, as a tensor-core product with a half output does; on numpy the same numbers are
    computed in float32 (for checking the plumbing: the CPU refuses these modes for training). TF32
    lets cupy's float32 products use tensor cores.
    """
    if precision.tf32:
        with tensor_core_float32(get_array_module(a)):
            return a @ b
    product = round_for_product(a, precision) @ round_for_product(b, precision)
    return round_for_product(product, precision).astype(a.dtype, copy=False)
