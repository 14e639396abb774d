"""Pooling over 1 or 2 spatial axes: MaxPool, AvgPool and AdaptiveAvgPool to size 1, as in PyTorch."""
from __future__ import annotations

import math
from typing import Any

from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.checks import float_array
from mpiprop.network.compute.windows import col2im, interior, output_sizes, pad, windows
from mpiprop.network.layers.conv import spatial_tuple
from mpiprop.network.layers.layer import Layer

Sizes = tuple[int, ...]


def _check_rank(layer: Layer, x: Array, dims: int) -> None:
    float_array(x, f"input of {type(layer).__name__}")
    if x.ndim != dims + 2:
        layout = "(batch, channels, length)" if dims == 1 else "(batch, channels, height, width)"
        raise ValueError(f"{layer!r} expects a {dims + 2}-D input {layout} but got shape {tuple(x.shape)}; "
                         "add a batch axis with x[None] or a channel axis with x[:, None]")


class _PoolNd(Layer):
    """Windowed pooling over `dims` spatial axes: the window settings, their checks and the input check."""

    dims = 0

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = spatial_tuple(kernel_size, self.dims, f"{name} kernel_size")
        self.stride = self.kernel_size if stride is None else spatial_tuple(stride, self.dims, f"{name} stride")
        self.padding = spatial_tuple(padding, self.dims, f"{name} padding", minimum=0)
        self.dilation = spatial_tuple(dilation, self.dims, f"{name} dilation")
        if ceil_mode:
            raise ValueError(f"{name} supports ceil_mode=False only; pad the input instead")
        effective = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))
        if any(2 * p > e for p, e in zip(self.padding, effective)):
            raise ValueError(f"{name} padding {self.padding} must be at most half the kernel size {effective} "
                             "(as in PyTorch); lower padding")

    def _windows(self, x: Array, fill: float) -> tuple[Array, Sizes]:
        _check_rank(self, x, self.dims)
        out = output_sizes(x.shape[2:], self.kernel_size, self.stride, self.padding, self.dilation, self)
        return windows(pad(x, self.padding, fill), self.kernel_size, self.stride, self.dilation, out), out

    def _to_input(self, columns: Array, input_shape: Sizes) -> Array:
        """Sum window cells (batch, channels, *out, *kernel) back into an array of the input's shape."""
        spatial = input_shape[2:]
        padded = tuple(n + 2 * p for n, p in zip(spatial, self.padding))
        dx = col2im(columns, padded, self.kernel_size, self.stride, self.dilation)
        return dx[interior(spatial, self.padding)] if any(self.padding) else dx

    def _check_output_grad(self, dy: Array, expected: Sizes) -> None:
        if tuple(dy.shape) != tuple(expected):
            raise ValueError(f"{self!r} got an output gradient of shape {tuple(dy.shape)} but its output has shape "
                             f"{tuple(expected)}; pass the gradient of the loss with respect to the output")

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class _MaxPoolNd(_PoolNd):
    """The largest value of each window; the gradient goes to it (the first one on ties, as PyTorch)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False):
        if return_indices:
            raise ValueError(f"{type(self).__name__} supports return_indices=False only")
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)

    def forward(self, x: Array) -> tuple[Array, Any]:
        view, out = self._windows(x, -math.inf)
        cells = view.reshape(x.shape[:2] + out + (-1,))
        xp = get_array_module(x)
        first_max = cells.argmax(axis=-1)
        y = xp.take_along_axis(cells, first_max[..., None], axis=-1)[..., 0]
        return y, (first_max, tuple(x.shape))

    def backward_input(self, dy: Array, cache: Any) -> Array:
        first_max, input_shape = cache
        self._check_output_grad(dy, first_max.shape)
        xp = get_array_module(dy)
        taps = xp.arange(math.prod(self.kernel_size))
        columns = (taps == first_max[..., None]) * dy[..., None]
        return self._to_input(columns.reshape(dy.shape + self.kernel_size), input_shape)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text + (f", dilation={self.dilation}" if any(d != 1 for d in self.dilation) else "")


class _AvgPoolNd(_PoolNd):
    """The mean of each window; padded zeros count in the divisor unless count_include_pad=False."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True,
                 divisor_override: int | None = None):
        if divisor_override is not None:
            raise ValueError(f"{type(self).__name__} supports divisor_override=None only")
        super().__init__(kernel_size, stride, padding, 1, ceil_mode)
        self.count_include_pad = bool(count_include_pad)

    def forward(self, x: Array) -> tuple[Array, Any]:
        view, out = self._windows(x, 0.0)
        kernel_axes = tuple(range(-self.dims, 0))
        divisor = self._divisor(x, out)
        return view.sum(axis=kernel_axes) / divisor, (divisor, tuple(x.shape), out)

    def backward_input(self, dy: Array, cache: Any) -> Array:
        divisor, input_shape, out = cache
        self._check_output_grad(dy, input_shape[:2] + out)
        xp = get_array_module(dy)
        share = (dy / divisor).reshape(dy.shape + (1,) * self.dims)
        return self._to_input(xp.broadcast_to(share, dy.shape + self.kernel_size), input_shape)

    def _divisor(self, x: Array, out: Sizes) -> Any:
        """The window size, or (count_include_pad=False) each window's count of input cells, shaped to broadcast."""
        if self.count_include_pad or not any(self.padding):
            return math.prod(self.kernel_size)
        ones = get_array_module(x).ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype)
        cells = windows(pad(ones, self.padding), self.kernel_size, self.stride, self.dilation, out)
        return cells.sum(axis=tuple(range(-self.dims, 0)))

    def extra_repr(self) -> str:
        return super().extra_repr() + ("" if self.count_include_pad else ", count_include_pad=False")


class _AdaptiveAvgPoolNd(Layer):
    """The mean over all spatial positions of each channel: adaptive average pooling to output size 1."""

    dims = 0

    def __init__(self, output_size=1):
        super().__init__()
        sizes = (output_size,) * self.dims if isinstance(output_size, int) else tuple(output_size)
        if sizes != (1,) * self.dims:
            raise ValueError(f"{type(self).__name__} supports output_size=1 only (global average pooling), got "
                             f"{output_size!r}; for larger outputs use AvgPool{self.dims}d with a matching kernel")
        self.output_size = sizes

    def forward(self, x: Array) -> tuple[Array, Sizes]:
        _check_rank(self, x, self.dims)
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True), tuple(x.shape)

    def backward_input(self, dy: Array, input_shape: Sizes) -> Array:
        if tuple(dy.shape) != tuple(input_shape[:2]) + self.output_size:
            raise ValueError(f"{self!r} got an output gradient of shape {tuple(dy.shape)} but its output has shape "
                             f"{tuple(input_shape[:2]) + self.output_size}")
        dx = get_array_module(dy).empty(input_shape, dtype=dy.dtype)
        dx[...] = dy / math.prod(input_shape[2:])
        return dx

    def extra_repr(self) -> str:
        return f"output_size={self.output_size[0] if self.dims == 1 else self.output_size}"


class MaxPool1d(_MaxPoolNd):
    """Max pooling over (batch, channels, length), as torch.nn.MaxPool1d.

    Args:
        kernel_size: window length.
        stride: window step; None (default) is kernel_size.
        padding: implicit -inf cells on both sides, at most half the (dilated) kernel size.
        dilation: spacing of a window's cells.
        return_indices, ceil_mode: False only.

    Raises:
        ValueError: for unsupported options or too much padding; in forward, for an input of the
            wrong rank or an output size below 1.
    """

    dims = 1


class MaxPool2d(_MaxPoolNd):
    """Max pooling over (batch, channels, height, width), as torch.nn.MaxPool2d; Args as `MaxPool1d`,
    each an int or a 2-tuple."""

    dims = 2


class AvgPool1d(_AvgPoolNd):
    """Average pooling over (batch, channels, length), as torch.nn.AvgPool1d.

    Args:
        kernel_size: window length.
        stride: window step; None (default) is kernel_size.
        padding: implicit zero cells on both sides, at most half the kernel size.
        ceil_mode: False only.
        count_include_pad: divide by the whole window (True, the default) or by its cells inside the input.
        divisor_override: None only.

    Raises:
        ValueError: for unsupported options or too much padding; in forward, for an input of the
            wrong rank or an output size below 1.
    """

    dims = 1


class AvgPool2d(_AvgPoolNd):
    """Average pooling over (batch, channels, height, width), as torch.nn.AvgPool2d; Args as `AvgPool1d`,
    each an int or a 2-tuple."""

    dims = 2


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    """Global average pooling (batch, channels, length) -> (batch, channels, 1), as torch.nn.AdaptiveAvgPool1d(1).

    Raises:
        ValueError: for an output_size other than 1.
    """

    dims = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    """Global average pooling (batch, channels, height, width) -> (batch, channels, 1, 1), as
    torch.nn.AdaptiveAvgPool2d(1) (or (1, 1)).

    Raises:
        ValueError: for an output_size other than 1.
    """

    dims = 2
