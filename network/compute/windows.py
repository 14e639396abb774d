"""Sliding windows over the spatial axes of (batch, channels, *spatial) arrays: im2col as a strided view, col2im."""
from __future__ import annotations

import itertools
import math
from typing import Any

from mpiprop.network.backend import Array, get_array_module

Sizes = tuple[int, ...]


def output_sizes(spatial: Sizes, kernel: Sizes, stride: Sizes, padding: Sizes, dilation: Sizes,
                 what: Any) -> Sizes:
    """Output size per spatial axis: floor((size + 2 padding - dilation (kernel - 1) - 1) / stride) + 1.

    Args:
        what: the layer (or its description), named in the error; formatted only when raising.

    Raises:
        ValueError: when an output size would be below 1, naming the input size and the settings.
    """
    sizes = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                  for n, k, s, p, d in zip(spatial, kernel, stride, padding, dilation))
    if min(sizes) < 1:
        raise ValueError(
            f"{what}: input of spatial size {spatial} with kernel_size={kernel}, stride={stride}, padding={padding}, "
            f"dilation={dilation} gives an output of size {sizes}; every output size must be at least 1: use a "
            "larger input, a smaller kernel or dilation, or more padding")
    return sizes


def pad(x: Array, padding: Sizes, value: float = 0.0) -> Array:
    """`x` with `padding` cells of `value` on both sides of each spatial axis (x itself when there is none)."""
    if not any(padding):
        return x
    xp = get_array_module(x)
    padded = xp.full(x.shape[:2] + tuple(n + 2 * p for n, p in zip(x.shape[2:], padding)), value, dtype=x.dtype)
    padded[interior(x.shape[2:], padding)] = x
    return padded


def interior(spatial: Sizes, padding: Sizes) -> tuple[slice, ...]:
    """The index of the unpadded part of a padded (batch, channels, *spatial) array."""
    return (slice(None), slice(None)) + tuple(slice(p, p + n) for n, p in zip(spatial, padding))


def windows(x: Array, kernel: Sizes, stride: Sizes, dilation: Sizes, out: Sizes) -> Array:
    """A strided view of shape (batch, channels, *out, *kernel), to be read only: window `o`, tap `k` of
    axis i is x[..., o * stride + k * dilation, ...]. No copy is made."""
    xp = get_array_module(x)
    batch_stride, channel_stride, *spatial_strides = x.strides
    shape = x.shape[:2] + tuple(out) + tuple(kernel)
    strides = ((batch_stride, channel_stride) + tuple(t * s for t, s in zip(spatial_strides, stride))
               + tuple(t * d for t, d in zip(spatial_strides, dilation)))
    return xp.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)


def col2im(columns: Array, padded_spatial: Sizes, kernel: Sizes, stride: Sizes, dilation: Sizes) -> Array:
    """The adjoint of `windows`: sum each window cell of `columns` (batch, channels, *out, *kernel) back into
    a zero array of shape (batch, channels, *padded_spatial), one strided add per kernel tap."""
    xp = get_array_module(columns)
    dims = len(kernel)
    out = columns.shape[2:2 + dims]
    summed = xp.zeros(columns.shape[:2] + tuple(padded_spatial), dtype=columns.dtype)
    for tap in itertools.product(*(range(k) for k in kernel)):
        target = tuple(slice(t * d, t * d + s * (o - 1) + 1, s) for t, d, s, o in zip(tap, dilation, stride, out))
        summed[(slice(None), slice(None)) + target] += columns[(Ellipsis,) + tap]
    return summed


def window_size(kernel: Sizes) -> int:
    """Cells in one window."""
    return math.prod(kernel)
