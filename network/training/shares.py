"""Shares joined: one whole-model dict from the dicts of processes that each hold part of the model."""
from __future__ import annotations

from typing import Any, Sequence

import numpy

from mpiprop.network.backend import is_array, to_numpy


def join_parts(parts: Sequence[dict[str, Any]], whole_shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """The union of `parts` (dicts keyed by parameter or buffer name), in their order.

    A name that several parts hold is joined by `joined` (pipeline stages hold different names;
    the tensor-parallel ranks of a stage hold the same names, as shares or alike).

    Args:
        parts: e.g. the state dicts of the processes holding one copy of the model, stage by stage
            and, within a stage, tensor rank by tensor rank.
        whole_shapes: the whole model's shape of each name (names it lacks are taken from the first part).
    """
    held: dict[str, list[Any]] = {}
    for part in parts:
        for name, value in part.items():
            held.setdefault(name, []).append(value)
    return {name: joined(values, whole_shapes.get(name)) for name, values in held.items()}


def joined(values: list[Any], whole_shape: tuple[int, ...] | None) -> Any:
    """One value from what several processes hold under one name, in their order.

    Arrays shorter than `whole_shape` along one axis are shares: the first whole / share of them
    are joined along that axis. Anything else (an array of the whole shape, a number, or a value
    of unknown shape) is held alike and taken from the first. A dict, such as an optimizer's state
    for one parameter, is joined entry by entry.
    """
    first = values[0]
    if isinstance(first, dict):
        return {key: joined([value[key] for value in values], whole_shape) for key in first}
    if whole_shape is None or not is_array(first) or first.ndim != len(whole_shape) or \
            tuple(first.shape) == tuple(whole_shape):
        return first
    axis = next(axis for axis, (share, whole) in enumerate(zip(first.shape, whole_shape)) if share != whole)
    return numpy.concatenate([to_numpy(value) for value in values[:whole_shape[axis] // first.shape[axis]]], axis=axis)
