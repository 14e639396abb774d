"""Shares joined: one whole-model dict from the dicts of processes that each hold part of the model."""
from __future__ import annotations

from typing import Any, Sequence

import numpy

from mpiprop.network.backend import is_array, to_numpy


def join_parts(parts: Sequence[dict[str, Any]], whole_shapes: dict[str, tuple[int, ...]],
               blocks: dict[str, int] | None = None) -> dict[str, Any]:
    """The union of `parts` (dicts keyed by parameter or buffer name), in their order.

    A name that several parts hold is joined by `joined` (pipeline stages hold different names;
    the tensor-parallel ranks of a stage hold the same names, as shares or alike).

    Args:
        parts: e.g. the state dicts of the processes holding one copy of the model, stage by stage
            and, within a stage, tensor rank by tensor rank.
        whole_shapes: the whole model's shape of each name (names it lacks are taken from the first part).
        blocks: for names whose split axis holds several blocks each split on its own (a fused
            [q | k | v] projection: 3), their number; 1 for names it lacks.
    """
    held: dict[str, list[Any]] = {}
    for part in parts:
        for name, value in part.items():
            held.setdefault(name, []).append(value)
    blocks = blocks or {}
    return {name: joined(values, whole_shapes.get(name), blocks.get(name, 1)) for name, values in held.items()}


def joined(values: list[Any], whole_shape: tuple[int, ...] | None, blocks: int = 1) -> Any:
    """One value from what several processes hold under one name, in their order.

    Arrays shorter than `whole_shape` along one axis are shares: the first ceil(whole / share)
    of them are joined along that axis and cut to the whole length (the last shares may end in
    padding, as a vocabulary padded to a multiple of the ranks). With `blocks` > 1 the axis holds
    that many equal blocks, each split over the shares ([q0 k0 v0] and [q1 k1 v1] join as
    [q0 q1 k0 k1 v0 v1]). Anything else (an array of the whole shape, a number, or a value of
    unknown shape) is held alike and taken from the first. A dict, such as an optimizer's state
    for one parameter, is joined entry by entry.
    """
    first = values[0]
    if isinstance(first, dict):
        return {key: joined([value[key] for value in values], whole_shape, blocks) for key in first}
    if whole_shape is None or not is_array(first) or first.ndim != len(whole_shape) or \
            tuple(first.shape) == tuple(whole_shape):
        return first
    axis = next(axis for axis, (share, whole) in enumerate(zip(first.shape, whole_shape)) if share != whole)
    count = -(-whole_shape[axis] // first.shape[axis])
    pieces = [numpy.split(to_numpy(value), blocks, axis=axis) for value in values[:count]]
    whole_block = whole_shape[axis] // blocks
    joined_blocks = [numpy.concatenate([piece[block] for piece in pieces], axis=axis).take(
        numpy.arange(whole_block), axis=axis) for block in range(blocks)]
    return numpy.concatenate(joined_blocks, axis=axis) if blocks > 1 else joined_blocks[0]
