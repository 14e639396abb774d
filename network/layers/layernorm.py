"""LayerNorm: normalise each sample over its last dimensions, then scale and shift, as PyTorch's LayerNorm."""
from __future__ import annotations

import math

import numpy

from mpiprop.network.backend import Array, get_array_module, module_for_device
from mpiprop.network.checks import float_array, float_dtype, non_negative_float, positive_int, same_kind_as_weights
from mpiprop.network.compute import cpu_kernels
from mpiprop.network.compute.reductions import column_dots, column_sums, row_dots, row_means
from mpiprop.network.layers.layer import Layer
from mpiprop.network.layers.parameter import Parameter


class LayerNorm(Layer):
    """y = (x - mean) / sqrt(var + eps) * weight + bias, mean and (biased) var over the last
    len(normalized_shape) dimensions of x, which must equal `normalized_shape`.

    Mean and variance are computed in float32 or wider (float64 inputs in float64, float16 in float32).

    Args:
        normalized_shape: an int (the last dimension) or the shape of the trailing dimensions.
        eps: added to the variance.
        elementwise_affine: whether to learn `weight` (starting at ones) and `bias` (at zeros),
            both of shape `normalized_shape`.
        bias: whether to learn `bias` (with elementwise_affine).
        dtype: parameter dtype (float32 by default).
        device: "cpu" (numpy) or "cuda" (cupy).

    Raises:
        TypeError, ValueError: for a normalized_shape that is not positive integers, or a negative eps.
    """

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, *, dtype=numpy.float32, device: str = "cpu"):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, (int, numpy.integer)) else tuple(normalized_shape)
        if not shape:
            raise ValueError("LayerNorm normalized_shape must name at least one dimension, got ()")
        self.normalized_shape = tuple(positive_int(size, "LayerNorm normalized_shape entry") for size in shape)
        self.eps = non_negative_float(eps, "LayerNorm eps")
        self.elementwise_affine = bool(elementwise_affine)
        float_dtype(dtype, "LayerNorm dtype")
        xp = module_for_device(device)
        self.weight = Parameter(xp.ones(self.normalized_shape, dtype=dtype)) if elementwise_affine else None
        self.bias = Parameter(xp.zeros(self.normalized_shape, dtype=dtype)) if elementwise_affine and bias else None

    def forward(self, x: Array) -> tuple[Array, tuple[Array, Array]]:
        self._check_input(x)
        fused = self._fused_forward(x)
        if fused is not None:
            return fused
        xp = get_array_module(x)
        statistics = self._rows(x.astype(numpy.promote_types(x.dtype, numpy.float32), copy=False))
        normalised = statistics - row_means(statistics)
        inverse_std = row_dots(normalised, normalised)
        inverse_std *= inverse_std.dtype.type(1.0 / normalised.shape[-1])
        inverse_std += self.eps
        xp.sqrt(inverse_std, out=inverse_std)
        xp.divide(1.0, inverse_std, out=inverse_std)
        normalised *= inverse_std
        if self.weight is None:
            return normalised.astype(x.dtype, copy=True).reshape(x.shape), (normalised, inverse_std)
        y = normalised * self.weight.data.reshape(-1)
        if self.bias is not None:
            y += self.bias.data.reshape(-1)
        return y.astype(x.dtype, copy=False).reshape(x.shape), (normalised, inverse_std)

    def backward_input(self, dy: Array, cache: tuple[Array, Array]) -> Array:
        normalised, inverse_std = cache
        self._check_output_grad(dy, normalised)
        fused = self._fused_input_grad(dy, normalised, inverse_std)
        if fused is not None:
            return fused
        rows = self._rows(dy)
        g = rows * self.weight.data.reshape(-1) if self.weight is not None else rows.astype(normalised.dtype)
        g = g.astype(normalised.dtype, copy=False)
        projection = row_dots(g, normalised)
        projection *= projection.dtype.type(1.0 / normalised.shape[-1])
        g -= row_means(g)
        g -= normalised * projection
        g *= inverse_std
        return g.astype(dy.dtype, copy=False).reshape(dy.shape)

    def backward_weight(self, dy: Array, cache: tuple[Array, Array]) -> None:
        if self.weight is None:
            return
        normalised, _ = cache
        self._check_output_grad(dy, normalised)
        rows = dy.reshape(-1, normalised.shape[-1])
        self.weight.grad += column_dots(rows, normalised).reshape(self.normalized_shape)
        if self.bias is not None:
            self.bias.grad += column_sums(rows).reshape(self.normalized_shape)

    def _fused_forward(self, x: Array) -> tuple[Array, tuple[Array, Array]] | None:
        """`forward` through `cpu_kernels`' loop, with the numpy path's cache; None when the loop cannot run."""
        if type(x) is not numpy.ndarray or not cpu_kernels.available():
            return None
        rows = self._rows(x)
        output, normalised = numpy.empty(x.shape, x.dtype), numpy.empty(rows.shape, x.dtype)
        inverse_std = numpy.empty(rows.shape[:-1] + (1,), x.dtype)
        width = rows.shape[-1]
        if not cpu_kernels.layer_norm_(rows.reshape(-1, width), self._vector(self.weight), self._vector(self.bias),
                                       self.eps, output.reshape(-1, width), normalised.reshape(-1, width),
                                       inverse_std.reshape(-1, 1)):
            return None
        return output, (normalised, inverse_std)

    def _fused_input_grad(self, dy: Array, normalised: Array, inverse_std: Array) -> Array | None:
        """`backward_input` through `cpu_kernels`' loop; None when the loop cannot run."""
        if type(dy) is not numpy.ndarray or not cpu_kernels.available():
            return None
        width = normalised.shape[-1]
        input_grad = numpy.empty(dy.shape, dy.dtype)
        if not cpu_kernels.layer_norm_input_grad_(dy.reshape(-1, width), normalised.reshape(-1, width),
                                                  inverse_std.reshape(-1, 1), self._vector(self.weight),
                                                  input_grad.reshape(-1, width)):
            return None
        return input_grad

    @staticmethod
    def _vector(parameter: Parameter | None) -> Array | None:
        return None if parameter is None else parameter.data.reshape(-1)

    def _rows(self, x: Array) -> Array:
        """x with the normalised dimensions as one last axis (a view where it can be one)."""
        return x.reshape(x.shape[:x.ndim - len(self.normalized_shape)] + (math.prod(self.normalized_shape),))

    def _check_input(self, x: Array) -> None:
        float_array(x, f"input of {self!r}")
        count = len(self.normalized_shape)
        if x.ndim < count or tuple(x.shape[x.ndim - count:]) != self.normalized_shape:
            raise ValueError(f"{self!r} normalises the last dimensions of shape {self.normalized_shape} but got "
                             f"input of shape {tuple(x.shape)}; give LayerNorm the trailing shape of its input, "
                             f"here {tuple(x.shape[-count:]) if x.ndim >= count else tuple(x.shape)}")
        if self.weight is None:
            return
        same_kind_as_weights(x, self.weight.data, self)

    def _check_output_grad(self, dy: Array, normalised: Array) -> None:
        if tuple(self._rows(dy).shape) != tuple(normalised.shape):
            output_shape = tuple(normalised.shape[:-1]) + self.normalized_shape
            raise ValueError(f"{self!r} got an output gradient of shape {tuple(dy.shape)} but its output has shape "
                             f"{output_shape}; pass the gradient of the loss with respect to the output")

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
