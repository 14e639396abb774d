"""untouched_state: trial runs of a model that leave its gradients, buffers and random generators as they were."""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

from mpiprop.network.compute import rng
from mpiprop.network.layers.layer import Layer


@contextmanager
def untouched_state(model: Layer) -> Iterator[None]:
    """Inside, `model` may run forward and backward freely; on leaving, its state is as before, bit for bit.

    Gradients and buffers (BatchNorm running statistics) are copied and written back. Random
    draws inside come from copies of the generators: the library's shared ones (`rng.seeded`
    keeps them aside) and any generator a layer holds of its own (Dropout(generator=...)).

    Args:
        model: the layer or Sequential to protect.
    """
    gradients = [(p.grad, p.grad.copy()) for p in model.parameters()]
    buffers = [(buffer, buffer.copy()) for _, buffer in model.named_buffers()]
    own_generators = _layers_with_own_generator(model)
    for layer in own_generators:
        layer.generator = copy.deepcopy(layer.generator)
    try:
        with rng.seeded(0):
            yield
    finally:
        for layer, generator in own_generators.items():
            layer.generator = generator
        for array, saved in gradients + buffers:
            array[...] = saved


def _layers_with_own_generator(model: Layer) -> dict[Layer, object]:
    return {layer: layer.generator for layer in _all_layers(model) if getattr(layer, "generator", None) is not None}


def _all_layers(layer: Layer) -> Iterator[Layer]:
    yield layer
    for _, child in layer.children():
        yield from _all_layers(child)
