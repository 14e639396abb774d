"""In-place updates without temporaries, out += a @ b and out += alpha * x, through BLAS for numpy arrays."""
from __future__ import annotations

import functools

import numpy

from mpiprop.network.backend import Array, get_array_module, gpu_add_matmul_
from mpiprop.network.compute.matmul import mkl_add_matmul_, product_in_precision
from mpiprop.network.compute.precision import current_precision
from mpiprop.network.compute.threads import run_product

# measured on one thread: numpy's 1.7 us against axpy's 2.7 us at 64 x 64, even at 128 x 128, axpy ahead above
NUMPY_AXPY_BELOW = 128 * 128
# OpenBLAS's gemm adding onto its output loses to numpy's product and a separate add once the inner dimension is
# this many times the output's longer side (weight gradients over many rows): (128, 512) over 2048 rows 2.88 ms
# against 2.20, (512, 128) 2.41 against 2.11; adding onto a larger output (a bias, short inner dimension) it wins
TEMPORARY_PRODUCT_FROM = 2
_BLAS_PREFIXES = {numpy.dtype(numpy.float32): "s", numpy.dtype(numpy.float64): "d"}


def add_matmul_(out: Array, a: Array, b: Array) -> None:
    """out += a @ b, in place, for 2-D arrays.

    For numpy float32/float64 arrays that BLAS (MKL where installed) can use as they lie in
    memory, one gemm call adds the product straight into `out` (no temporary, one pass over
    `out`), so `out` may be a view into a larger buffer; without MKL, a product whose inner
    dimension is TEMPORARY_PRODUCT_FROM times `out`'s longer side or more is made apart and then
    added (faster there, and the temporary is small beside the operands); cupy arrays of the weight-gradient
    layout likewise go through one cuBLAS gemm. Anything else (other dtypes, strided or
    overlapping arrays) takes the plain `out += a @ b`. Outside float32 precision
    (`using_precision`) the product is computed as that precision says and then added.
    """
    precision = current_precision()
    if precision.mixed or precision.tf32:
        out += product_in_precision(a, b, precision)
        return
    if get_array_module(out) is not numpy:
        if not gpu_add_matmul_(out, a, b):
            out += a @ b
        return
    run_product(out.size * (a.shape[-1] if a.ndim else 1), lambda: _numpy_add_matmul_(out, a, b))


def _numpy_add_matmul_(out: numpy.ndarray, a: numpy.ndarray, b: numpy.ndarray) -> None:
    if mkl_add_matmul_(out, a, b):
        return
    if a.ndim == 2 and a.shape[1] >= TEMPORARY_PRODUCT_FROM * max(out.shape):
        out += a @ b
        return
    prefix = _blas_prefix(out, a, b)
    if prefix is not None and a.size and b.size:
        # BLAS is column-major: the C-ordered `out` is the column-major out.T, and out.T += b.T @ a.T.
        first, transpose_first = _column_major(b.T)
        second, transpose_second = _column_major(a.T)
        if first is not None and second is not None:
            _blas(prefix + "gemm")(1.0, first, second, beta=1.0, c=out.T, trans_a=transpose_first,
                                   trans_b=transpose_second, overwrite_c=True)
            return
    out += a @ b


def add_scaled_(out: Array, x: Array, alpha: float) -> None:
    """out += alpha * x, in place, for arrays of the same shape.

    Numpy float32/float64 contiguous arrays of NUMPY_AXPY_BELOW elements or more go through one
    BLAS axpy (one pass, no temporary; the product and sum may be fused, so the last bit can
    differ from `out += alpha * x`); smaller ones take numpy's `out += alpha * x`, which is faster
    than the checks and the call into BLAS.
    """
    if type(out) is numpy.ndarray and out.size < NUMPY_AXPY_BELOW:
        out += alpha * x
        return
    prefix = _blas_prefix(out, x)
    if prefix is not None and out.shape == x.shape and x.flags.c_contiguous:
        _blas(prefix + "axpy")(x.reshape(-1), out.reshape(-1), a=alpha)
        return
    out += alpha * x


def _blas_prefix(out: Array, *operands: Array) -> str | None:
    """"s" or "d" when BLAS can update `out` in place from `operands`, else None."""
    if type(out) is not numpy.ndarray or any(type(operand) is not numpy.ndarray for operand in operands):
        return None
    prefix = _BLAS_PREFIXES.get(out.dtype)
    if prefix is None or any(operand.dtype != out.dtype for operand in operands):
        return None
    flags = out.flags
    if not (flags.c_contiguous and flags.writeable and flags.aligned) or out.size == 0:
        return None
    if any(numpy.may_share_memory(out, operand) for operand in operands):
        return None
    return prefix


def _column_major(matrix: numpy.ndarray) -> tuple[numpy.ndarray | None, bool]:
    """`matrix` as BLAS reads it without a copy: (array, transpose flag), or (None, False) when strided."""
    if matrix.flags.f_contiguous:
        return matrix, False
    if matrix.flags.c_contiguous:
        return matrix.T, True
    return None, False


@functools.lru_cache(maxsize=None)
def _blas(name: str):
    from scipy.linalg import blas  # imported on first use: it is heavier than the rest of network

    return getattr(blas, name)
