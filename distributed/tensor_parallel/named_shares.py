"""Named shares: which entries of a model's state are split over a tensor-parallel group, and each rank's cut of them.

Joining shares back into whole arrays is `mpiprop.network.training.shares.join_parts`, which needs the whole shapes
and, for fused projections, the blocks (`split_blocks`).
"""
from __future__ import annotations

from typing import Any

from mpiprop.distributed.tensor_parallel.full_state import named_split_layers
from mpiprop.distributed.tensor_parallel.split import Split, cut_share
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.layers.layer import Layer

__all__ = ["Split", "named_splits", "split_blocks", "tensor_group_of", "share_of"]


def named_splits(model: Layer) -> dict[str, Split]:
    """{full parameter name: Split} for every split parameter of `model`, e.g. {"2.weight": Split(0, (16, 4), 2)}."""
    return {prefix + name: split for prefix, layer in named_split_layers(model)
            for name, split in layer.parameter_splits().items()}


def split_blocks(splits: dict[str, Split]) -> dict[str, int]:
    """{name: blocks} for the splits whose axis holds several blocks, as `join_parts` takes them."""
    return {name: split.blocks for name, split in splits.items() if split.blocks > 1}


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
    return {name: cut_share(value, splits[name], rank) if name in splits else value for name, value in named.items()}
