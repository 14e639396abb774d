"""Whole-model state dicts of a tensor-parallel model: the same names and shapes as the single-process model."""
from __future__ import annotations

from typing import Iterator

import numpy

from mpiprop.distributed.tensor_parallel.split_layer import SplitLayer
from mpiprop.network.backend import Array, to_numpy
from mpiprop.network.layers.layer import Layer


def full_state_dict(model: Layer) -> dict[str, numpy.ndarray]:
    """`model.state_dict()` with each split layer's shares gathered into whole arrays. Collective over
    every tensor-parallel group in `model`.

    Args:
        model: a layer or Sequential holding tensor-parallel layers (`ColumnParallelLinear`,
            `RowParallelLinear`, the split attention and vocabulary layers: any `SplitLayer`).

    Returns:
        Host arrays under the full names ("2.weight"), loadable into the single-process model
        and storable with `save_checkpoint`.
    """
    state = {name: to_numpy(value) for name, value in model.state_dict().items()}
    for prefix, layer in named_split_layers(model):
        state.update({prefix + name: value for name, value in layer.full_parameters().items()})
    return state


def load_full_state_dict(model: Layer, state: dict[str, Array]) -> None:
    """Load a whole-model state dict (from `full_state_dict` or the single-process model): every split
    layer takes its rank's share.

    Raises:
        KeyError, ValueError: as `Layer.load_state_dict`, for missing names or other shapes.
    """
    local = dict(state)
    for prefix, layer in named_split_layers(model):
        whole = {name: state[prefix + name] for name, _ in layer.named_parameters() if prefix + name in state}
        local.update({prefix + name: share for name, share in layer.shares_of(whole).items()})
    model.load_state_dict(local)


def named_split_layers(layer: Layer, prefix: str = "") -> Iterator[tuple[str, SplitLayer]]:
    """(name prefix, layer) for each split layer in `layer`, e.g. ("2.", ColumnParallelLinear(...))."""
    if isinstance(layer, SplitLayer):
        yield prefix, layer
        return
    for name, child in layer.children():
        yield from named_split_layers(child, f"{prefix}{name}.")
