"""Named shares: which entries of a model's state are split over a tensor-parallel group, and how to join or cut them."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy

from mpiprop.distributed.tensor_parallel.full_state import named_split_layers
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import is_array, to_numpy
from mpiprop.network.layer import Layer


@dataclass(frozen=True)
class Split:
    """A parameter split along `axis` over `ranks` ranks; `whole` is its shape in the single-process model."""

    axis: int
    whole: tuple[int, ...]
    ranks: int

    @property
    def share(self) -> tuple[int, ...]:
        return tuple(size // self.ranks if axis == self.axis else size for axis, size in enumerate(self.whole))


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


def join_shares(parts: Sequence[dict[str, Any]], splits: dict[str, Split]) -> dict[str, Any]:
    """One dict from the dicts of the ranks of a model copy, in (stage, tensor rank) order.

    Entries of split parameters (arrays, or optimizer-state dicts holding arrays of the share's
    shape) are joined along their axis in tensor-rank order; any other entry, which every
    tensor rank of a stage holds alike, is taken once.
    """
    collected: dict[str, list[Any]] = {}
    for part in parts:
        for name, value in part.items():
            collected.setdefault(name, []).append(value)
    return {name: _joined(values, splits.get(name)) for name, values in collected.items()}


def share_of(named: dict[str, Any], splits: dict[str, Split], rank: int) -> dict[str, Any]:
    """`named` (a whole-model dict keyed by parameter name) with each split entry cut to tensor rank `rank`'s share."""
    return {name: _cut(value, splits[name], rank) if name in splits else value for name, value in named.items()}


def _joined(values: list[Any], split: Split | None) -> Any:
    if split is None or len(values) == 1:
        return values[0]
    if isinstance(values[0], dict):
        return {key: _joined([value[key] for value in values], split) for key in values[0]}
    if is_array(values[0]) and tuple(values[0].shape) == split.share:
        return numpy.concatenate([to_numpy(value) for value in values], axis=split.axis)
    return values[0]


def _cut(value: Any, split: Split, rank: int) -> Any:
    if isinstance(value, dict):
        return {key: _cut(item, split, rank) for key, item in value.items()}
    if not is_array(value) or tuple(value.shape) != split.whole:
        return value
    width = split.whole[split.axis] // split.ranks
    index = [slice(None)] * value.ndim
    index[split.axis] = slice(rank * width, (rank + 1) * width)
    return value[tuple(index)].copy()
