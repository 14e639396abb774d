"""Fused loops for the CPU, compiled by numba where the optional `numba` package is installed (`mpiprop[numba]`).

numpy makes one pass over memory per operation: LayerNorm's forward makes six, the tanh GELU's
backward nine, Adam's update eight. The loops here do the same arithmetic in one pass (a row of
LayerNorm or a block of the softmax is gone over twice while it is in cache) for LayerNorm, the
tanh GELU, the causal softmax of attention and Adam's update: together about 10% off the GPT
training step of the model benchmark. They are plain Python, compiled on first use for the
arrays' dtype and cached on disk (numba's `cache=True`), and vectorised: sums may be reordered,
but infinities and NaNs end where numpy's passes put them. numba has no vectorised tanh or exp,
so those stay numpy's, between two loops.

Each public function writes into arrays it is given and returns False, writing nothing, when it
cannot run (numba absent or turned off, an array that is not a C-contiguous numpy float32 or
float64 array, dtypes or shapes that differ): the caller then takes its numpy path, which is
also the one for cupy. Outputs must not overlap inputs, except where a docstring says so.
`MPIPROP_KERNELS=numpy` turns the loops off, and so does the block
`with mpiprop.network.compute.cpu_kernels.disabled():`.
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable

import numpy

from mpiprop.network.compute.switch import Switch

FLOAT_DTYPES = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))
# reordering sums and fusing multiply-adds lets the loops use vector instructions; no flag that assumes finite values
FAST_MATH = {"reassoc", "contract", "nsz", "arcp"}
_switch = Switch()


def available() -> bool:
    """True when numba is installed and the loops are not turned off."""
    return _switch.on and _numba_found()


def disabled() -> contextlib.AbstractContextManager:
    """Within the block, every layer takes its numpy path (to compare the two)."""
    return _switch.turned_off()


def layer_norm_(rows: Any, weight: Any | None, bias: Any | None, eps: float, output: Any, normalised: Any,
                inverse_std: Any) -> bool:
    """LayerNorm of each row of the 2-D `rows`, written into `output` (scaled by `weight` and shifted by `bias`
    where given), `normalised` (same shape) and `inverse_std` (rows, 1); True when done, False when the loops
    cannot run (nothing written)."""
    if (not _usable(rows, weight, bias, output, normalised, inverse_std)
            or not rows.shape == output.shape == normalised.shape or inverse_std.shape != (rows.shape[0], 1)
            or any(vector is not None and vector.shape != rows.shape[1:] for vector in (weight, bias))):
        return False
    width, scalar = rows.shape[1], rows.dtype.type
    weight = numpy.ones(width, rows.dtype) if weight is None else weight
    bias = numpy.zeros(width, rows.dtype) if bias is None else bias
    _compiled(_layer_norm_loop)(rows, weight, bias, output, normalised, inverse_std, scalar(1.0 / width),
                                scalar(eps), scalar(0), scalar(1))
    return True


def layer_norm_input_grad_(output_grad: Any, normalised: Any, inverse_std: Any, weight: Any | None,
                           input_grad: Any) -> bool:
    """LayerNorm's input gradient, from the 2-D output gradient and `layer_norm_`'s normalised rows and inverse
    standard deviations, written into `input_grad`; True when done, False when the loops cannot run."""
    if (not _usable(output_grad, normalised, inverse_std, weight, input_grad)
            or not output_grad.shape == normalised.shape == input_grad.shape
            or inverse_std.shape != (normalised.shape[0], 1)
            or (weight is not None and weight.shape != normalised.shape[1:])):
        return False
    scalar = normalised.dtype.type
    weight = numpy.ones(normalised.shape[1], normalised.dtype) if weight is None else weight
    _compiled(_layer_norm_input_grad_loop)(output_grad, normalised, inverse_std, weight, input_grad,
                                           scalar(1.0 / normalised.shape[1]), scalar(0))
    return True


def tanh_gelu_(x: Any, u: Any, output: Any, scale: float, cubic: float) -> bool:
    """The tanh GELU: u = 1 + tanh(scale (x + cubic x³)) and output = 0.5 x u, written into `u` and `output`
    (the tanh is numpy's, in place in `u`); True when done, False when the loops cannot run."""
    if not _usable(x, u, output) or not x.shape == u.shape == output.shape:
        return False
    scalar = x.dtype.type
    flat_x, flat_u = x.reshape(-1), u.reshape(-1)
    _compiled(_tanh_argument_loop)(flat_x, flat_u, scalar(scale), scalar(scale * cubic))
    numpy.tanh(flat_u, out=flat_u)
    _compiled(_gelu_finish_loop)(flat_x, flat_u, output.reshape(-1), scalar(0.5), scalar(1))
    return True


def tanh_gelu_grad_(output_grad: Any, x: Any, u: Any, scale: float, cubic: float, grad: Any) -> bool:
    """The tanh GELU's input gradient, output_grad u (0.5 + 0.5 scale x (1 + 3 cubic x²) (2 - u)) from `tanh_gelu_`'s
    u, written into `grad`; True when done, False when the loops cannot run."""
    if not _usable(output_grad, x, u, grad) or not output_grad.shape == x.shape == u.shape == grad.shape:
        return False
    scalar = x.dtype.type
    _compiled(_gelu_grad_loop)(output_grad.reshape(-1), x.reshape(-1), u.reshape(-1), grad.reshape(-1),
                               scalar(0.5 * scale), scalar(1.5 * scale * cubic), scalar(0.5), scalar(2))
    return True


def adam_(grad: Any, sign: Any, beta1: Any, beta2: Any, step_size: Any, bias2_correction: Any, eps: Any, l2: Any,
          decay: Any, weight: Any, exp_avg: Any, exp_avg_sq: Any) -> bool:
    """One Adam step of `weight` in place, with its moments `exp_avg` and `exp_avg_sq` (scalars of their dtype):
    g' = sign g + l2 w; w = decay w; m = beta1 m + (1 - beta1) g'; v = beta2 v + (1 - beta2) g'²;
    w -= step_size m / (sqrt(v) bias2_correction + eps). True when done, False when the loop cannot run."""
    if (not _usable(weight, grad, exp_avg, exp_avg_sq)
            or not weight.shape == grad.shape == exp_avg.shape == exp_avg_sq.shape):
        return False
    one = weight.dtype.type(1)
    _compiled(_adam_loop)(grad.reshape(-1), sign, beta1, one - beta1, beta2, one - beta2, step_size,
                          bias2_correction, eps, l2, decay, weight.reshape(-1), exp_avg.reshape(-1),
                          exp_avg_sq.reshape(-1))
    return True


def causal_softmax_(scores: Any, scale: float) -> bool:
    """The causal softmax over the keys of (..., keys, queries) `scores`, in place: each query's scores times
    `scale`, -inf added where a key lies in its future (the queries are the last of the keys' positions),
    less their largest, exponentiated (numpy's exp) and divided by their sum. True when done, False when the
    loops cannot run."""
    if not _usable(scores) or scores.ndim < 2:
        return False
    columns = scores.reshape(-1, *scores.shape[-2:])
    scalar = scores.dtype.type
    largest = numpy.empty(scores.shape[-1], scores.dtype)
    _compiled(_scale_mask_and_shift_loop)(columns, scalar(scale), scalar(-numpy.inf), largest)
    numpy.exp(columns, out=columns)
    _compiled(_divide_by_sums_loop)(columns, largest, scalar(0), scalar(1))
    return True


def _usable(first: Any, *others: Any | None) -> bool:
    """Whether the loops are on and the arrays (None skipped) are C-contiguous numpy arrays of one float dtype."""
    arrays = [first, *(array for array in others if array is not None)]
    return (available() and all(type(array) is numpy.ndarray and array.flags.c_contiguous for array in arrays)
            and first.dtype in FLOAT_DTYPES and all(array.dtype == first.dtype for array in arrays))


@functools.lru_cache(maxsize=None)
def _numba_found() -> bool:
    if os.environ.get("MPIPROP_KERNELS", "").lower() == "numpy":
        return False
    try:
        import numba  # noqa: F401  (one built for another numpy raises ImportError too)
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=None)
def _compiled(loop: Callable) -> Callable:
    """`loop` compiled (for each dtype on first call); nogil lets the job's guard threads run meanwhile."""
    import numba
    try:
        return numba.njit(fastmath=FAST_MATH, cache=True, nogil=True)(loop)
    except RuntimeError:  # nowhere to write numba's cache: each process compiles for itself
        return numba.njit(fastmath=FAST_MATH, nogil=True)(loop)


# --- the loops (plain Python; numba compiles them) -----------------------------------------------------------
# Constants come in as arguments of the arrays' dtype: a Python literal would turn float32 arithmetic into float64.


def _layer_norm_loop(rows, weight, bias, output, normalised, inverse_std, inverse_width, eps, zero, one):
    for i in range(rows.shape[0]):
        total = zero
        for j in range(rows.shape[1]):
            total += rows[i, j]
        mean = total * inverse_width
        squares = zero
        for j in range(rows.shape[1]):
            centred = rows[i, j] - mean
            squares += centred * centred
        scale = one / numpy.sqrt(squares * inverse_width + eps)
        inverse_std[i, 0] = scale
        for j in range(rows.shape[1]):
            value = (rows[i, j] - mean) * scale
            normalised[i, j] = value
            output[i, j] = value * weight[j] + bias[j]


def _layer_norm_input_grad_loop(output_grad, normalised, inverse_std, weight, input_grad, inverse_width, zero):
    for i in range(normalised.shape[0]):
        total = projection = zero
        for j in range(normalised.shape[1]):
            scaled = output_grad[i, j] * weight[j]
            total += scaled
            projection += scaled * normalised[i, j]
        mean, projection = total * inverse_width, projection * inverse_width
        for j in range(normalised.shape[1]):
            scaled = output_grad[i, j] * weight[j]
            input_grad[i, j] = (scaled - mean - normalised[i, j] * projection) * inverse_std[i, 0]


def _tanh_argument_loop(x, argument, scale, scaled_cubic):
    for k in range(x.shape[0]):
        argument[k] = x[k] * (scale + scaled_cubic * x[k] * x[k])


def _gelu_finish_loop(x, tanh, output, half, one):
    for k in range(x.shape[0]):
        u = one + tanh[k]
        tanh[k] = u
        output[k] = half * x[k] * u


def _gelu_grad_loop(output_grad, x, u, grad, half_scale, scaled_cubic, half, two):
    for k in range(x.shape[0]):
        grad[k] = output_grad[k] * u[k] * (half + x[k] * (half_scale + scaled_cubic * x[k] * x[k]) * (two - u[k]))


def _adam_loop(g, sign, beta1, one_minus_beta1, beta2, one_minus_beta2, step_size, bias2_correction, eps, l2, decay,
               weight, exp_avg, exp_avg_sq):
    for k in range(weight.shape[0]):
        grad = sign * g[k] + l2 * weight[k]
        exp_avg[k] = beta1 * exp_avg[k] + one_minus_beta1 * grad
        exp_avg_sq[k] = beta2 * exp_avg_sq[k] + one_minus_beta2 * grad * grad
        weight[k] = decay * weight[k] - step_size * exp_avg[k] / (numpy.sqrt(exp_avg_sq[k]) * bias2_correction + eps)


def _scale_mask_and_shift_loop(scores, scale, minus_infinity, largest):
    keys, queries = scores.shape[1], scores.shape[2]
    for n in range(scores.shape[0]):
        largest[:] = minus_infinity
        for key in range(keys):
            for query in range(queries):
                value = scores[n, key, query] * scale
                if key > query + keys - queries:
                    value += minus_infinity
                scores[n, key, query] = value
                largest[query] = max(largest[query], value)
        for key in range(keys):
            for query in range(queries):
                scores[n, key, query] -= largest[query]


def _divide_by_sums_loop(columns, inverse_sums, zero, one):
    for n in range(columns.shape[0]):
        inverse_sums[:] = zero
        for key in range(columns.shape[1]):
            for query in range(columns.shape[2]):
                inverse_sums[query] += columns[n, key, query]
        for query in range(columns.shape[2]):
            inverse_sums[query] = one / inverse_sums[query]
        for key in range(columns.shape[1]):
            for query in range(columns.shape[2]):
                columns[n, key, query] *= inverse_sums[query]

