"""The math of a linear layer, written once: forward, input gradient and weight gradient as functions."""
from __future__ import annotations

from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.compute.blocks import as_rows
from mpiprop.network.compute.inplace import add_matmul_
from mpiprop.network.compute.matmul import matmul
from mpiprop.network.compute.reductions import column_sums


def linear_forward(x: Array, weight: Array, bias: Array | None = None) -> Array:
    """y = x @ weight + bias, for `x` of shape (..., in) and `weight` of shape (in, out).

    Args:
        x: the input, of shape (..., in).
        weight: the (in, out) matrix.
        bias: the (out,) vector, or None.

    Returns:
        A new array of shape (..., out).
    """
    rows = as_rows(x)
    if bias is None:
        y = matmul(rows, weight)
    else:  # the product added onto rows of the bias: one gemm, no separate pass to add the bias
        y = get_array_module(rows).empty((rows.shape[0], weight.shape[1]), dtype=rows.dtype)
        y[...] = bias
        add_matmul_(y, rows, weight)
    return y if x.ndim == 2 else y.reshape(*x.shape[:-1], weight.shape[1])


def linear_input_grad(dy: Array, weight: Array) -> Array:
    """dx = dy @ weight.T, for `dy` of shape (..., out): a new array of shape (..., in)."""
    dx = matmul(as_rows(dy), weight, transpose_b=True)
    return dx if dy.ndim == 2 else dx.reshape(*dy.shape[:-1], weight.shape[0])


def linear_weight_grad_(weight_grad: Array, bias_grad: Array | None, x: Array, dy: Array) -> None:
    """Add x.T @ dy into `weight_grad` and dy summed over every leading axis into `bias_grad` (when not None), in place.

    Args:
        weight_grad: the (in, out) gradient to accumulate into.
        bias_grad: the (out,) gradient to accumulate into, or None without a bias.
        x: the forward's input, of shape (..., in).
        dy: the gradient of the output, of shape (..., out).
    """
    rows = as_rows(dy)
    add_matmul_(weight_grad, as_rows(x).T, rows)
    if bias_grad is not None:
        bias_grad += column_sums(rows)[0]
