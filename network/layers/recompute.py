"""Recompute: run a range of layers keeping only its input, and run its forward again during backward."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import numpy

from mpiprop.network.compute import rng
from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.layers.dropout import Dropout
from mpiprop.network.layers.layer import REMEMBERED, Layer
from mpiprop.network.layers.sequential import Sequential, SequentialCache


class RecomputeCache:
    """What Recompute keeps between forward and backward: the input, the random generator
    states its dropout layers drew from, and the training flag of each wrapped layer.

    `replayed` holds the recomputed layers' caches from `backward_input` until `backward_weight`.
    """

    def __init__(self, x: Array, generator_states: list[tuple[Any, dict]], modes: list[bool]):
        self.input = x
        self.generator_states = generator_states
        self.modes = modes
        self.replayed: SequentialCache | None = None


class Recompute(Sequential):
    """Wrap a range of layers so its forward keeps only the input and backward recomputes the rest.

    Activation memory of the range falls from every layer's cache to one input, at the cost
    of a second forward during backward. Results are bit for bit those of the plain layers,
    dropout included (the generators are replayed from their state at forward), and
    BatchNorm running statistics are updated once per forward, as without the wrapper.

    Inside a Sequential the wrapper counts as one layer for indexing and slicing, but its
    layers keep the parent's numbering, so parameter names and checkpoints are unchanged::

        model = Sequential(Linear(8, 8), ReLU(), Linear(8, 8), ReLU(), Linear(8, 2))
        model = Sequential(*model[:1], Recompute(model[1:4]), *model[4:])
        [name for name, _ in model.named_parameters()]   # ["0.weight", "0.bias", "2.weight", ...]

    Args:
        layers: the range to wrap: a Sequential (e.g. the slice `model[2:5]`), or layers.

    Raises:
        TypeError: when an argument is not a network Layer.
        ValueError: when the range is empty.
    """

    numbered_in_parent = True

    def __init__(self, *layers: Layer):
        if len(layers) == 1 and isinstance(layers[0], Sequential) and not isinstance(layers[0], Recompute):
            layers = tuple(layers[0].layers)
        super().__init__(*layers)
        if not self.layers:
            raise ValueError("Recompute needs at least one layer; pass a non-empty range such as model[2:5]")

    def forward(self, x: Array) -> tuple[Array, RecomputeCache]:
        cache = RecomputeCache(x, self._generator_states(x), self._modes())
        y, _ = super().forward(x)
        return y, cache

    def backward(self, dy: Array, cache: RecomputeCache = REMEMBERED, *, input_grad: bool = True) -> Array | None:
        """Recompute the forward from the kept input, then backpropagate `dy` through it.

        Args:
            dy: gradient of the loss with respect to the range's output.
            cache: from `forward`; defaults to the one remembered by the last call.
            input_grad: when False, skip the gradient with respect to the input and return None.
        """
        cache = self._cache_or_last(cache)
        return super().backward(dy, self._replay(cache), input_grad=input_grad)

    def backward_input(self, dy: Array, cache: RecomputeCache) -> Array:
        """Input gradient only; the recomputed caches stay in `cache` until `backward_weight`."""
        cache.replayed = self._replay(cache)
        return super().backward_input(dy, cache.replayed)

    def backward_weight(self, dy: Array, cache: RecomputeCache) -> None:
        """Parameter gradients from the caches recomputed by `backward_input`, then frees them;
        without a `backward_input` before, recomputes the forward and backpropagates for them."""
        if cache.replayed is None:
            self.backward(dy, cache, input_grad=False)
            return
        replayed, cache.replayed = cache.replayed, None
        super().backward_weight(dy, replayed)

    def _replay(self, cache: RecomputeCache) -> SequentialCache:
        """The wrapped layers' caches, from a second forward as the first one ran."""
        with _generators_at(cache.generator_states), _modes_at(self._all_layers(), cache.modes), \
                _buffers_kept(self):
            _, caches = super().forward(cache.input)
        return caches

    def _generator_states(self, x: Array) -> list[tuple[Any, dict]]:
        """(source, state) for each generator the range's active dropout layers will draw from: a
        layer's own generator, or its random stream named by (array module, stream number), since
        `rng.seeded` may swap the stream generators between forward and backward."""
        dropouts = [layer for layer in self._all_layers()
                    if isinstance(layer, Dropout) and layer.training and layer.p > 0.0]
        xp = get_array_module(x)
        sources = [d.generator if d.generator is not None else (xp, d.stream) for d in dropouts]
        unique = {id(source) if not isinstance(source, tuple) else source: source for source in sources}
        return [(source, _generator_of(source).bit_generator.state) for source in unique.values()]

    def _modes(self) -> list[bool]:
        return [layer.training for layer in self._all_layers()]

    def _all_layers(self) -> list[Layer]:
        return list(self.descendants())

    def __repr__(self) -> str:
        return "Recompute(\n" + "\n".join(f"  {layer!r}" for layer in self.layers) + "\n)"


def _generator_of(source: Any) -> numpy.random.Generator:
    """`source` itself, or for (array module, stream) the generator `rng.stream_generator` gives now."""
    generator = rng.stream_generator(source[1], source[0]) if isinstance(source, tuple) else source
    if not isinstance(generator, numpy.random.Generator):
        raise NotImplementedError(
            f"Recompute cannot replay dropout drawn from a {type(generator).__module__} generator "
            "(its state cannot be saved); keep Dropout layers outside the recomputed range on the GPU"
        )
    return generator


@contextmanager
def _generators_at(states: list[tuple[Any, dict]]):
    """Set each generator to its saved state; afterwards put back where it was."""
    generators = [(_generator_of(source), state) for source, state in states]
    current = [(generator, generator.bit_generator.state) for generator, _ in generators]
    for generator, state in generators:
        generator.bit_generator.state = state
    try:
        yield
    finally:
        for generator, state in current:
            generator.bit_generator.state = state


@contextmanager
def _modes_at(layers: list[Layer], modes: list[bool]):
    """Give each layer its training flag from forward time; afterwards the current ones."""
    current = [layer.training for layer in layers]
    for layer, mode in zip(layers, modes):
        layer.training = mode
    try:
        yield
    finally:
        for layer, mode in zip(layers, current):
            layer.training = mode


@contextmanager
def _buffers_kept(layer: Layer):
    """Undo buffer updates (BatchNorm running statistics) made inside, so the replay leaves no trace."""
    saved = [(buffer, buffer.copy()) for _, buffer in layer.named_buffers()]
    try:
        yield
    finally:
        for buffer, values in saved:
            buffer[...] = values
