"""Linear: the fully connected layer y = x @ weight + bias, weight of shape (in, out)."""
from __future__ import annotations

import math

import numpy

from mpiprop.network.layers import init
from mpiprop.network.backend import Array, module_for_device
from mpiprop.network.checks import float_array, float_dtype, positive_int, same_kind_as_weights
from mpiprop.network.layers.layer import Layer
from mpiprop.network.layers.linear_math import linear_forward, linear_input_grad, linear_weight_grad_
from mpiprop.network.layers.parameter import Parameter


class Linear(Layer):
    """y = x @ weight + bias, on inputs of shape (..., in_features), giving (..., out_features): the parameters
    of the math in linear_math.py.

    Leading dimensions are flattened for the products, so a (batch, time, channels) activation
    needs no reshaping; the weight gradient sums over all of them.

    Args:
        in_features: width of the input.
        out_features: width of the output.
        bias: whether to add a learnt bias.
        dtype: parameter dtype (float32 by default).
        device: "cpu" (numpy) or "cuda" (cupy).
        generator: numpy Generator for the initial values; defaults to the seeded shared one.

    Weights and bias start as U(-1/sqrt(in), 1/sqrt(in)), PyTorch's default; re-initialise
    with `mpiprop.network.layers.init` (e.g. `init.kaiming_normal_(layer.weight, nonlinearity="relu")`).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 dtype=numpy.float32, device: str = "cpu", generator=None):
        super().__init__()
        self.in_features = positive_int(in_features, "Linear in_features")
        self.out_features = positive_int(out_features, "Linear out_features")
        float_dtype(dtype, "Linear dtype")
        xp = module_for_device(device)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = init.uniform_(Parameter(xp.empty((in_features, out_features), dtype=dtype)),
                                    -bound, bound, generator)
        self.bias = None
        if bias:
            self.bias = init.uniform_(Parameter(xp.empty((out_features,), dtype=dtype)), -bound, bound, generator)

    def forward(self, x: Array) -> tuple[Array, Array]:
        self._check_input(x)
        return linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data), x

    def backward_input(self, dy: Array, x: Array) -> Array:
        self._check_output_grad(dy, x)
        return linear_input_grad(dy, self.weight.data)

    def backward_weight(self, dy: Array, x: Array) -> None:
        self._check_output_grad(dy, x)
        linear_weight_grad_(self.weight.grad, None if self.bias is None else self.bias.grad, x, dy)

    def _check_input(self, x: Array) -> None:
        float_array(x, f"input of {self!r}")
        if x.ndim < 2 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{self!r} expects input of shape (..., {self.in_features}) with a batch dimension first, "
                f"but got {tuple(x.shape)}; check the previous layer's width, add Flatten(), or give a "
                "single sample a batch dimension with x[None]"
            )
        same_kind_as_weights(x, self.weight.data, self)

    def _check_output_grad(self, dy: Array, x: Array) -> None:
        expected = tuple(x.shape[:-1]) + (self.out_features,)
        if tuple(dy.shape) != expected:
            raise ValueError(
                f"{self!r} got an output gradient of shape {tuple(dy.shape)} but its output has shape "
                f"{expected}; pass the gradient of the loss with respect to the output"
            )

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"
