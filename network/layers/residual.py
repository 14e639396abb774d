"""Residual: y = x + f(x), f a few layers applied in order (the skip connection of a transformer block)."""
from __future__ import annotations

from typing import Iterator

from mpiprop.network.backend import Array
from mpiprop.network.layers.layer import REMEMBERED, Layer
from mpiprop.network.layers.sequential import Sequential, SequentialCache


class Residual(Layer):
    """y = x + f(x), with f the `layers` applied one after the other.

    The layers are the children "0", "1", ..., so inside a Sequential a parameter reads
    "3.1.weight" (layer 1 of the residual at position 3). `model[3][1]` is that layer. A
    pre-norm transformer block is two of them::

        Residual(LayerNorm(C), attention), Residual(LayerNorm(C), Linear(C, 4 * C), GELU(), Linear(4 * C, C))

    The residual counts as one layer of the Sequential holding it, so a pipeline never cuts it,
    `Sequential.backward`'s hooks report its parameters final once its backward is done, and
    `Recompute(Residual(...))` recomputes the whole block.

    Args:
        layers: f's layers; the output of the last must have the input's shape.

    Raises:
        TypeError: when an argument is not a network Layer.
        ValueError: when no layer is given.
    """

    def __init__(self, *layers: Layer):
        super().__init__()
        if not layers:
            raise ValueError("Residual needs at least one layer for f in x + f(x)")
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Residual argument {index} is a {type(layer).__name__}, not a network Layer")
        self.body = Sequential(*layers)

    def __len__(self) -> int:
        return len(self.body)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.body)

    def __getitem__(self, index: int) -> Layer:
        return self.body.layers[index]

    def children(self) -> Iterator[tuple[str, Layer]]:
        return self.body.children()

    def forward(self, x: Array) -> tuple[Array, SequentialCache]:
        fx, cache = self.body.forward(x)
        if tuple(fx.shape) != tuple(x.shape):
            raise ValueError(f"Residual adds f(x) to x but f maps shape {tuple(x.shape)} to {tuple(fx.shape)}; "
                             "the last layer of f must give back the input's width")
        return x + fx, cache

    def backward(self, dy: Array, cache: SequentialCache = REMEMBERED, *, input_grad: bool = True) -> Array | None:
        """dy + f's input gradient, accumulating f's parameter gradients.

        Args:
            dy: gradient of the loss with respect to the output.
            cache: from `forward`; defaults to the one remembered by the last `residual(x)`.
            input_grad: when False, skip the input gradient and return None.
        """
        cache = self._cache_or_last(cache)
        dx = self.body.backward(dy, cache, input_grad=input_grad)
        return dy + dx if input_grad else None

    def backward_input(self, dy: Array, cache: SequentialCache) -> Array:
        """Input gradient only; f's output gradients stay in `cache` for `backward_weight`."""
        return dy + self.body.backward_input(dy, cache)

    def backward_weight(self, dy: Array, cache: SequentialCache) -> None:
        """f's parameter gradients, from the output gradients kept by `backward_input`; without a
        `backward_input` before, backpropagates `dy` through f for them."""
        if cache.output_grads is None:
            self.body.backward(dy, cache, input_grad=False)
        else:
            self.body.backward_weight(dy, cache)

    def __repr__(self) -> str:
        lines = [f"  ({index}): {layer!r}" for index, layer in enumerate(self.body.layers)]
        return "Residual(\n" + "\n".join(lines) + "\n)"

