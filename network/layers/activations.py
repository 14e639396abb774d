"""Elementwise activations and softmax, each with its exact derivative."""
from __future__ import annotations

import math

from mpiprop.network.backend import Array, erf, get_array_module
from mpiprop.network.checks import float_array
from mpiprop.network.compute import cpu_kernels
from mpiprop.network.compute.blocks import as_rows, row_blocks
from mpiprop.network.layers.layer import Layer


class Activation(Layer):
    """A parameter-free layer; subclasses define `forward` and `backward_input`."""

    def forward(self, x: Array):
        float_array(x, f"input of {type(self).__name__}")
        return self._forward(x)


class Sigmoid(Activation):
    """1 / (1 + exp(-x)), computed without overflow for large |x|."""

    def _forward(self, x):
        xp = get_array_module(x)
        y = xp.exp(-xp.abs(x))  # in (0, 1]: never overflows
        y = xp.where(x >= 0, 1.0 / (1.0 + y), y / (1.0 + y)).astype(x.dtype, copy=False)
        return y, y

    def backward_input(self, dy, y):
        return dy * y * (1.0 - y)


class Tanh(Activation):
    def _forward(self, x):
        y = get_array_module(x).tanh(x)
        return y, y

    def backward_input(self, dy, y):
        return dy * (1.0 - y * y)


class ReLU(Activation):
    def _forward(self, x):
        y = get_array_module(x).maximum(x, 0)
        return y, y

    def backward_input(self, dy, y):
        return dy * (y > 0)


class LeakyReLU(Activation):
    """x for x > 0, negative_slope * x otherwise."""

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def _forward(self, x):
        positive = x > 0
        return get_array_module(x).where(positive, x, x * self.negative_slope), positive

    def backward_input(self, dy, positive):
        return get_array_module(dy).where(positive, dy, dy * self.negative_slope)

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class ELU(Activation):
    """x for x > 0, alpha * (exp(x) - 1) otherwise."""

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = float(alpha)

    def _forward(self, x):
        xp = get_array_module(x)
        y = xp.where(x > 0, x, self.alpha * xp.expm1(xp.minimum(x, 0)))
        return y, (x, y)

    def backward_input(self, dy, cache):
        x, y = cache
        return get_array_module(dy).where(x > 0, dy, dy * (y + self.alpha))

    def extra_repr(self):
        return f"alpha={self.alpha}"


class GELU(Activation):
    """x * Φ(x), Φ the standard normal CDF: exact (erf) or, with approximate="tanh", PyTorch's
    0.5 * x * (1 + tanh(sqrt(2/π) * (x + 0.044715 x³))).

    Args:
        approximate: "none" (the erf form) or "tanh".

    Raises:
        ValueError: for another `approximate`.
    """

    APPROXIMATIONS = ("none", "tanh")

    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in self.APPROXIMATIONS:
            raise ValueError(f"GELU approximate must be one of {self.APPROXIMATIONS}, got {approximate!r}")
        self.approximate = approximate

    def _forward(self, x):
        if self.approximate == "tanh":
            return _tanh_gelu(x)
        cdf = 0.5 * (1.0 + erf(x * (1.0 / math.sqrt(2.0))))
        return (x * cdf).astype(x.dtype, copy=False), (x, cdf)

    def backward_input(self, dy, cache):
        if self.approximate == "tanh":
            return _tanh_gelu_grad(dy, *cache)
        x, cdf = cache
        pdf = get_array_module(x).exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
        return dy * (cdf + x * pdf)

    def extra_repr(self):
        return "" if self.approximate == "none" else f"approximate={self.approximate!r}"


_TANH_SCALE = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715


def _tanh_gelu(x: Array) -> tuple[Array, tuple[Array, Array]]:
    """0.5 x u with u = 1 + tanh(s (x + c x³)), and the cache (x, u), block by block, each block through
    `cpu_kernels` where it can, else each step in place."""
    xp = get_array_module(x)
    rows = as_rows(x)
    y, u = xp.empty_like(rows), xp.empty_like(rows)
    for block in row_blocks(rows):
        xb, ub, yb = rows[block], u[block], y[block]
        if cpu_kernels.tanh_gelu_(xb, ub, yb, _TANH_SCALE, _TANH_CUBIC):
            continue
        xp.multiply(xb, xb, out=ub)
        ub *= _TANH_SCALE * _TANH_CUBIC
        ub += _TANH_SCALE
        ub *= xb
        xp.tanh(ub, out=ub)
        ub += 1.0
        xp.multiply(ub, xb, out=yb)
        yb *= 0.5
    return y.reshape(x.shape), (x, u.reshape(x.shape))


def _tanh_gelu_grad(dy: Array, x: Array, u: Array) -> Array:
    """dy * d/dx of 0.5 x u, u = 1 + tanh(s (x + c x³)): dy * u (0.5 + 0.5 s x (1 + 3 c x²) (2 - u)),
    since 1 - tanh² = u (2 - u); in one pass through `cpu_kernels`, else block by block, each step in place."""
    xp = get_array_module(dy)
    rows, x_rows, u_rows = as_rows(dy), as_rows(x), as_rows(u)
    grad = xp.empty_like(u_rows)
    if cpu_kernels.tanh_gelu_grad_(rows, x_rows, u_rows, _TANH_SCALE, _TANH_CUBIC, grad):
        return grad.reshape(dy.shape)
    slope = xp.empty_like(u_rows)
    for block in row_blocks(u_rows):
        xb, ub, gb, sb = x_rows[block], u_rows[block], grad[block], slope[block]
        xp.multiply(xb, xb, out=sb)
        sb *= 1.5 * _TANH_SCALE * _TANH_CUBIC
        sb += 0.5 * _TANH_SCALE
        sb *= xb
        xp.subtract(2.0, ub, out=gb)
        gb *= sb
        gb += 0.5
        gb *= ub
        gb *= rows[block]
    return grad.reshape(dy.shape)


class Softmax(Activation):
    """exp(x_i) / sum_j exp(x_j) along `axis` (the last by default)."""

    def __init__(self, axis: int = -1):
        super().__init__()
        self.axis = axis

    def _forward(self, x):
        xp = get_array_module(x)
        e = xp.exp(x - x.max(axis=self.axis, keepdims=True))
        y = e / e.sum(axis=self.axis, keepdims=True)
        return y, y

    def backward_input(self, dy, y):
        return y * (dy - (dy * y).sum(axis=self.axis, keepdims=True))

    def extra_repr(self):
        return f"axis={self.axis}"
