"""Named shares: which entries of a model's state are split over a tensor-parallel group, and each rank's cut of them.

Joining shares back into whole arrays is `mpiprop.network.training.shares.join_parts`, which needs only the whole shapes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mpiprop.distributed.tensor_parallel.full_state import named_split_layers
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import is_array
from mpiprop.network.layers.layer import Layer


@dataclass(frozen=True)
class Split:
    """A parameter split along `axis` over `ranks` ranks; `whole` is its shape in the single-process model."""

    axis: int
    whole: tuple[int, ...]
    ranks: int


def named_splits(model: Layer) -> dict[str, Split]:
    """{full parameter name: Split} for every split parameter of `model`, e.g. {"2.weight": Split(0, (16, 4), 2)}."""
    splits = {}
    for prefix, layer in named_split_layers(model):
        ranks = layer.group.size
        splits[prefix + "weight"] = Split(layer.split_axis, (layer.in_features, layer.out_features), ranks)
        if layer.bias is not None and layer.bias_split:
            splits[prefix + "bias"] = Split(0, (layer.out_features,), ranks)
    return splits


def tensor_group_of(model: Layer) -> Communicator | None:
    """The tensor-parallel group that `model`'s split layers share; None when it has none.

    Raises:
        ValueError: when its split layers use groups of different sizes.
    """
    groups = [layer.group for _, layer in named_split_layers(model)]
    sizes = sorted({group.size for group in groups})
    if len(sizes) > 1:
        raise ValueError(f"the model's tensor-parallel layers are split over groups of {sizes} ranks; "
                         "build every split layer with the same tensor_parallel_group")
    return groups[0] if groups else None


def share_of(named: dict[str, Any], splits: dict[str, Split], rank: int) -> dict[str, Any]:
    """`named` (a whole-model dict keyed by parameter name) with each split entry cut to tensor rank `rank`'s share."""
    return {name: _cut(value, splits[name], rank) if name in splits else value for name, value in named.items()}


def _cut(value: Any, split: Split, rank: int) -> Any:
    if isinstance(value, dict):
        return {key: _cut(item, split, rank) for key, item in value.items()}
    if not is_array(value) or tuple(value.shape) != split.whole:
        return value
    width = split.whole[split.axis] // split.ranks
    index = [slice(None)] * value.ndim
    index[split.axis] = slice(rank * width, (rank + 1) * width)
    return value[tuple(index)].copy()
