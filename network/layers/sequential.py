"""Sequential: layers applied in order, sliceable so a pipeline can cut it into stages."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from mpiprop.network.backend import Array
from mpiprop.network.layers.layer import REMEMBERED, Layer
from mpiprop.network.layers.parameter import Parameter

ParametersFinal = Callable[[list[Parameter]], None]


class SequentialCache:
    """What a Sequential's backward needs: each layer's cache, and, once `backward_input`
    has run, the gradient arriving at each layer's output (kept for `backward_weight`)."""

    def __init__(self, caches: list[Any]):
        self.caches = caches
        self.output_grads: list[Array] | None = None


class Sequential(Layer):
    """Apply `layers` one after the other.

    `model[i]` is a layer and `model[i:j]` a Sequential sharing the same layer objects
    (and so the same parameters). Parameter names follow the position in this model:
    "0.weight", "0.bias", "2.weight", ...

    A Sequential whose `numbered_in_parent` is True (a wrapper of a range of layers, such as
    `Recompute`) counts as one layer for indexing but lends its layers the parent's numbering,
    so wrapping layers 2..4 keeps their names "2.weight", "4.weight".
    """

    numbered_in_parent = False

    def __init__(self, *layers: Layer):
        super().__init__()
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential argument {index} is a {type(layer).__name__}, not a network Layer")
        self.layers = list(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __getitem__(self, index: int | slice) -> Layer:
        if isinstance(index, slice):
            return Sequential(*self.layers[index])
        return self.layers[index]

    def children(self) -> Iterator[tuple[str, Layer]]:
        position = 0
        for layer in self.layers:
            inlined = isinstance(layer, Sequential) and layer.numbered_in_parent
            for _, child in layer.children() if inlined else [("", layer)]:
                yield str(position), child
                position += 1

    def forward(self, x: Array) -> tuple[Array, SequentialCache]:
        caches = []
        for layer in self.layers:
            x, cache = layer.forward(x)
            caches.append(cache)
        return x, SequentialCache(caches)

    def backward(self, dy: Array, cache: SequentialCache = REMEMBERED, *, input_grad: bool = True,
                 on_parameters_final: ParametersFinal | None = None,
                 on_parameters_written: ParametersFinal | None = None) -> Array | None:
        """Backpropagate `dy` through all layers, accumulating parameter gradients.

        Args:
            dy: gradient of the loss with respect to the model's output.
            cache: from `forward`; defaults to the one remembered by the last `model(x)`.
            input_grad: when False, skip the gradient with respect to the model's input
                (a first pipeline stage or a plain training loop never needs it) and return None.
            on_parameters_final: called after each layer's backward with the parameters whose
                gradients that layer completed (a parameter shared by several layers is final
                after the last of them backward visits); every parameter is passed exactly once,
                so gradient synchronisation can start while earlier layers still compute.
            on_parameters_written: called before each layer's backward with the parameters whose
                gradients that layer is the first to write (a parameter shared by several layers:
                the last of them); every parameter is passed exactly once, so storage for
                gradients can be made just before it is needed.

        Returns:
            The gradient with respect to the input, or None when `input_grad` is False.
        """
        cache = self._cache_or_last(cache)
        final = self.parameters_final_after_each_layer() if on_parameters_final is not None else None
        written = self._parameters_first_written_by_each_layer() if on_parameters_written is not None else None
        stop = 0 if input_grad else self._first_layer_with_parameters()
        for index in range(len(self.layers) - 1, stop - 1, -1):
            layer, layer_cache = self.layers[index], cache.caches[index]
            if written is not None and written[index]:
                on_parameters_written(written[index])
            if index == stop and not input_grad:
                layer.backward_weight(dy, layer_cache)
                dy = None
            else:
                dy = layer.backward(dy, layer_cache)
            if final is not None:
                on_parameters_final(final[index])
        return dy if input_grad else None

    def backward_input(self, dy: Array, cache: SequentialCache) -> Array:
        """Input gradient only; keeps each layer's output gradient in `cache` for `backward_weight`."""
        output_grads = [None] * len(self.layers)
        for index in range(len(self.layers) - 1, -1, -1):
            output_grads[index] = dy
            dy = self.layers[index].backward_input(dy, cache.caches[index])
        cache.output_grads = output_grads
        return dy

    def backward_weight(self, dy: Array, cache: SequentialCache, *,
                        on_parameters_final: ParametersFinal | None = None) -> None:
        """Parameter gradients, from the output gradients kept by `backward_input`.

        Args:
            dy: unused (the output gradients kept in `cache` are used); part of the layer contract.
            cache: the cache `backward_input` ran on.
            on_parameters_final: as for `backward`, called last layer first.
        """
        if cache.output_grads is None:
            raise RuntimeError("Sequential.backward_weight needs backward_input to run first on the same cache")
        final = self.parameters_final_after_each_layer() if on_parameters_final is not None else None
        for index in range(len(self.layers) - 1, -1, -1):
            self.layers[index].backward_weight(cache.output_grads[index], cache.caches[index])
            if final is not None:
                on_parameters_final(final[index])
        cache.output_grads = None

    def parameters_final_after_each_layer(self) -> list[list[Parameter]]:
        """For each layer, the parameters whose gradient is complete once backward has passed it.

        Backward visits layers last to first, so a parameter shared by several layers is final
        after the first of them in the model; each list is in reverse order of the layer's parameters.
        """
        return [list(reversed(held)) for held in self._parameters_by_first_visit(range(len(self.layers)))]

    def _parameters_first_written_by_each_layer(self) -> list[list[Parameter]]:
        """For each layer, the parameters whose gradient backward (visiting layers last to first) writes there first."""
        return self._parameters_by_first_visit(range(len(self.layers) - 1, -1, -1))

    def _parameters_by_first_visit(self, order: Iterable[int]) -> list[list[Parameter]]:
        """For each layer, the parameters it is the first to hold when the layers are visited in `order`."""
        seen: set[int] = set()
        held: list[list[Parameter]] = [[] for _ in self.layers]
        for index in order:
            for p in self.layers[index].parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    held[index].append(p)
        return held

    def _first_layer_with_parameters(self) -> int:
        for index, layer in enumerate(self.layers):
            if layer.parameters():
                return index
        return len(self.layers)

    def __repr__(self) -> str:
        lines = [f"  ({index}): {layer!r}" for index, layer in enumerate(self.layers)]
        return "Sequential(\n" + "\n".join(lines) + "\n)"
