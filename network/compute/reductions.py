"""Sums and dot products along short rows (attention, LayerNorm, biases), faster on the CPU than numpy's reductions:
sums as products with ones (BLAS), dot products through einsum (one pass, no temporary)."""
from __future__ import annotations

from mpiprop.network.backend import Array, get_array_module


def row_sums(x: Array) -> Array:
    """x summed along its last axis, keeping it (as `x.sum(axis=-1, keepdims=True)`), by a product with a
    column of ones: BLAS sums short rows about twice as fast as numpy's reduction."""
    return x @ get_array_module(x).ones((x.shape[-1], 1), dtype=x.dtype)


def row_means(x: Array) -> Array:
    """x's means along its last axis, keeping it (as `x.mean(axis=-1, keepdims=True)`), through `row_sums`."""
    sums = row_sums(x)
    sums *= x.dtype.type(1.0 / x.shape[-1])
    return sums


def column_sums(x: Array) -> Array:
    """x summed along its second-to-last axis, keeping it (as `x.sum(axis=-2, keepdims=True)`), by a product
    with a row of ones, like `row_sums`."""
    return get_array_module(x).ones((1, x.shape[-2]), dtype=x.dtype) @ x


def row_dots(a: Array, b: Array) -> Array:
    """The dot products of a's and b's rows, keeping the last axis (as `(a * b).sum(axis=-1, keepdims=True)`),
    in one pass without the temporary product."""
    return get_array_module(a).einsum("...i,...i->...", a, b)[..., None]


def column_dots(a: Array, b: Array) -> Array:
    """(a * b) summed over every axis but the last (a vector of a's width), in one pass without the temporary."""
    width = a.shape[-1]
    return get_array_module(a).einsum("ij,ij->j", a.reshape(-1, width), b.reshape(-1, width))
