"""Conv1d and Conv2d: cross-correlation over N spatial axes as one matrix product on strided windows (im2col)."""
from __future__ import annotations

import math
from typing import Any

import numpy

from mpiprop.network.backend import Array, get_array_module, module_for_device
from mpiprop.network.checks import float_array, float_dtype, non_negative_int, positive_int, same_kind_as_weights
from mpiprop.network.compute.matmul import matmul
from mpiprop.network.compute.windows import col2im, interior, output_sizes, pad, windows
from mpiprop.network.layers import init
from mpiprop.network.layers.layer import REMEMBERED, Layer
from mpiprop.network.layers.parameter import Parameter

Sizes = tuple[int, ...]


def spatial_tuple(value: Any, dims: int, name: str, minimum: int = 1) -> Sizes:
    """`value` (an int, or a sequence of `dims` ints) as a tuple of `dims` ints, each at least `minimum`.

    Raises:
        TypeError, ValueError: naming `name` and the value.
    """
    if isinstance(value, (int, numpy.integer)):
        values = (value,) * dims
    elif isinstance(value, (tuple, list)):
        values = tuple(value)
    else:
        values = ()
    if len(values) != dims:
        raise TypeError(f"{name} must be an int or a sequence of {dims} ints, got {value!r}")
    check = positive_int if minimum == 1 else non_negative_int
    return tuple(check(v, name) for v in values)


# --- the math, once for any number of spatial axes ------------------------------------------------
# The window matrix `columns` has one row per (sample, output position) and one column per
# (kernel tap, input channel): channels vary fastest, so copying the strided windows into it
# moves runs of in_channels values, not runs of kernel-size values (several times faster).
def conv_forward(x: Array, weight: Array, bias: Array | None, stride: Sizes, padding: Sizes,
                 dilation: Sizes, what: Any = "convolution") -> tuple[Array, Array]:
    """y[n, o, *p] = bias[o] + sum over c, k of weight[o, c, *k] x_padded[n, c, *(p * stride + k * dilation)].

    Args:
        x: input of shape (batch, in_channels, *spatial).
        weight: (out_channels, in_channels, *kernel), PyTorch's layout.
        bias: (out_channels,) or None.
        stride, padding, dilation: one int per spatial axis.
        what: the layer, named in error messages.

    Returns:
        y of shape (batch, out_channels, *out), and the window matrix `columns` of shape
        (batch * prod(out), prod(kernel) * in_channels) that the weight gradient needs.

    Raises:
        ValueError: when an output size would be below 1.
    """
    kernel = weight.shape[2:]
    out = output_sizes(x.shape[2:], kernel, stride, padding, dilation, what)
    view = windows(pad(x, padding), kernel, stride, dilation, out)
    dims = len(kernel)
    rows_first = (0,) + tuple(range(2, 2 + 2 * dims)) + (1,)  # (batch, *out, *kernel, channels)
    columns = get_array_module(x).ascontiguousarray(view.transpose(rows_first))
    columns = columns.reshape(x.shape[0] * math.prod(out), -1)
    rows = matmul(columns, taps_first(weight), transpose_b=True)
    if bias is not None:
        rows += bias
    return channels_first(rows, x.shape[0], out), columns


def conv_input_grad(dy_rows: Array, weight: Array, input_shape: Sizes, stride: Sizes, padding: Sizes,
                    dilation: Sizes) -> Array:
    """The gradient with respect to the input, from `dy_rows` = `rows_of(dy)`: one product, then col2im."""
    kernel, spatial = weight.shape[2:], input_shape[2:]
    out = output_sizes(spatial, kernel, stride, padding, dilation, "convolution")
    dims = len(kernel)
    columns = matmul(dy_rows, taps_first(weight))
    columns = columns.reshape((input_shape[0],) + out + kernel + (input_shape[1],))
    columns = columns.transpose((0, 1 + 2 * dims) + tuple(range(1, 1 + 2 * dims)))  # (batch, channels, *out, *kernel)
    padded = tuple(n + 2 * p for n, p in zip(spatial, padding))
    dx = col2im(columns, padded, kernel, stride, dilation)
    return dx[interior(spatial, padding)] if any(padding) else dx


def conv_weight_grad(dy_rows: Array, columns: Array, weight_grad: Array) -> None:
    """weight_grad += the gradient with respect to the weight: one product, added in place."""
    out_channels, kernel = weight_grad.shape[0], weight_grad.shape[2:]
    product = matmul(dy_rows.T, columns).reshape((out_channels,) + kernel + (weight_grad.shape[1],))
    weight_grad += get_array_module(product).moveaxis(product, -1, 1)


def taps_first(weight: Array) -> Array:
    """(out, in, *kernel) -> the C-contiguous (out, prod(kernel) * in) matrix whose columns match `columns`."""
    moved = get_array_module(weight).moveaxis(weight, 1, -1)
    return get_array_module(weight).ascontiguousarray(moved).reshape(weight.shape[0], -1)


def rows_of(dy: Array) -> Array:
    """(batch, channels, *out) -> the C-contiguous (batch * prod(out), channels) matrix the products use."""
    moved = get_array_module(dy).moveaxis(dy, 1, -1)
    return get_array_module(dy).ascontiguousarray(moved).reshape(-1, dy.shape[1])


def channels_first(rows: Array, batch: int, out: Sizes) -> Array:
    """(batch * prod(out), channels) -> a C-contiguous (batch, channels, *out) array."""
    xp = get_array_module(rows)
    return xp.ascontiguousarray(xp.moveaxis(rows.reshape((batch,) + tuple(out) + (rows.shape[1],)), -1, 1))


# --- the layers -----------------------------------------------------------------------------------
class _ConvNd(Layer):
    """Convolution over `dims` spatial axes; see Conv1d and Conv2d."""

    dims = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *,
                 dtype=numpy.float32, device: str = "cpu", generator=None):
        super().__init__()
        name = type(self).__name__
        self.in_channels = positive_int(in_channels, f"{name} in_channels")
        self.out_channels = positive_int(out_channels, f"{name} out_channels")
        self.kernel_size = spatial_tuple(kernel_size, self.dims, f"{name} kernel_size")
        self.stride = spatial_tuple(stride, self.dims, f"{name} stride")
        self.padding = spatial_tuple(padding, self.dims, f"{name} padding", minimum=0)
        self.dilation = spatial_tuple(dilation, self.dims, f"{name} dilation")
        if groups != 1:
            raise ValueError(f"{name} supports groups=1 only, got groups={groups!r}; for a grouped or depthwise "
                             "convolution use one layer per group")
        if padding_mode != "zeros":
            raise ValueError(f"{name} supports padding_mode='zeros' only, got {padding_mode!r}")
        float_dtype(dtype, f"{name} dtype")
        xp = module_for_device(device)
        bound = 1.0 / math.sqrt(self.in_channels * math.prod(self.kernel_size))  # kaiming_uniform_(a=sqrt(5))
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        self.weight = init.uniform_(Parameter(xp.empty(shape, dtype=dtype)), -bound, bound, generator)
        self.bias = None
        if bias:
            self.bias = init.uniform_(Parameter(xp.empty((self.out_channels,), dtype=dtype)), -bound, bound, generator)

    def forward(self, x: Array) -> tuple[Array, tuple[Array, Sizes]]:
        self._check_input(x)
        bias = None if self.bias is None else self.bias.data
        y, columns = conv_forward(x, self.weight.data, bias, self.stride, self.padding, self.dilation, self)
        return y, (columns, tuple(x.shape))

    def backward(self, dy: Array, cache: Any = REMEMBERED) -> Array:
        """Both halves of backward, sharing one (batch * positions, channels) copy of `dy`."""
        cache = self._cache_or_last(cache)
        dy_rows = self._dy_rows(dy, cache)
        self._weight_grad(dy_rows, cache)
        return conv_input_grad(dy_rows, self.weight.data, cache[1], self.stride, self.padding, self.dilation)

    def backward_input(self, dy: Array, cache: tuple[Array, Sizes]) -> Array:
        dy_rows = self._dy_rows(dy, cache)
        return conv_input_grad(dy_rows, self.weight.data, cache[1], self.stride, self.padding, self.dilation)

    def backward_weight(self, dy: Array, cache: tuple[Array, Sizes]) -> None:
        self._weight_grad(self._dy_rows(dy, cache), cache)

    def _weight_grad(self, dy_rows: Array, cache: tuple[Array, Sizes]) -> None:
        conv_weight_grad(dy_rows, cache[0], self.weight.grad)
        if self.bias is not None:
            self.bias.grad += dy_rows.sum(axis=0)

    def _dy_rows(self, dy: Array, cache: tuple[Array, Sizes]) -> Array:
        input_shape = cache[1]
        expected = (input_shape[0], self.out_channels) + output_sizes(
            input_shape[2:], self.kernel_size, self.stride, self.padding, self.dilation, self)
        if tuple(dy.shape) != expected:
            raise ValueError(f"{self!r} got an output gradient of shape {tuple(dy.shape)} but its output has shape "
                             f"{expected}; pass the gradient of the loss with respect to the output")
        return rows_of(dy)

    def _check_input(self, x: Array) -> None:
        float_array(x, f"input of {type(self).__name__}")
        layout = "(batch, channels, length)" if self.dims == 1 else "(batch, channels, height, width)"
        if x.ndim != self.dims + 2:
            raise ValueError(f"{self!r} expects a {self.dims + 2}-D input {layout} but got shape {tuple(x.shape)}; "
                             "add a batch axis with x[None] or a channel axis with x[:, None]")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"{self!r} expects {self.in_channels} input channels but got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)}); check the previous layer's out_channels")
        same_kind_as_weights(x, self.weight.data, self)

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if any(self.padding):
            text += f", padding={self.padding}"
        if any(d != 1 for d in self.dilation):
            text += f", dilation={self.dilation}"
        return text + ("" if self.bias is not None else ", bias=False")


class Conv1d(_ConvNd):
    """1-D convolution over inputs (batch, in_channels, length), as torch.nn.Conv1d.

    Args:
        in_channels, out_channels: channels of the input and the output.
        kernel_size, stride, padding, dilation: an int or a 1-tuple each; padding adds zeros on both sides.
        groups: 1 only.
        bias: whether to add a learnt bias per output channel.
        padding_mode: "zeros" only.
        dtype: parameter dtype (float32 by default).
        device: "cpu" (numpy) or "cuda" (cupy).
        generator: numpy Generator for the initial values; defaults to the seeded shared one.

    `weight` has shape (out_channels, in_channels, kernel_size), PyTorch's layout, so weights cross
    to and from torch unchanged; weight and bias start as U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with
    fan_in = in_channels * kernel_size (PyTorch's kaiming_uniform_ with a=sqrt(5)).

    Raises:
        ValueError: for groups other than 1, a padding_mode other than "zeros", non-positive sizes;
            in forward, for an input of the wrong rank or channel count, or an output size below 1.
    """

    dims = 1


class Conv2d(_ConvNd):
    """2-D convolution over inputs (batch, in_channels, height, width), as torch.nn.Conv2d.

    Args and Raises as `Conv1d`, with kernel_size, stride, padding and dilation an int or a 2-tuple;
    `weight` has shape (out_channels, in_channels, kernel_height, kernel_width).
    """

    dims = 2
