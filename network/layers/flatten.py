"""Flatten: (batch, d1, d2, ...) -> (batch, d1 * d2 * ...)."""
from __future__ import annotations

from mpiprop.network.backend import Array
from mpiprop.network.checks import float_array
from mpiprop.network.layers.layer import Layer


class Flatten(Layer):
    def forward(self, x: Array):
        float_array(x, "input of Flatten")
        if x.ndim < 1:
            raise ValueError("Flatten needs an input with a batch dimension, got a scalar")
        return x.reshape(x.shape[0], -1), x.shape

    def backward_input(self, dy: Array, input_shape: tuple[int, ...]) -> Array:
        return dy.reshape(input_shape)
