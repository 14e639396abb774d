"""Agreeing on a batch across pipeline ranks: the first stage describes the input, the last the targets.

Each rank fills its part of a small int64 vector (the others leave zeros); an allreduce
with MAX gives every rank the whole description, from which all of them derive the same
micro-batch plan or raise the same error.
"""
from __future__ import annotations

from typing import Any

import numpy

from mpiprop.distributed.pipeline.micro_batches import BatchPlan, micro_batch_sizes
from mpiprop.network.backend import is_array

MAX_FEATURE_DIMS = 14
LENGTH = 4 + MAX_FEATURE_DIMS + 2
_INPUT_STATUS, _ROWS, _NDIM, _DTYPE, _DIMS = 0, 1, 2, 3, 4
_TARGET_STATUS, _TARGET_ROWS = LENGTH - 2, LENGTH - 1
_OK, _NOT_AN_ARRAY, _NO_BATCH_DIMENSION, _TOO_MANY_DIMENSIONS = 1, 2, 3, 4


def describe_batch(x: Any, y: Any, first: bool, last: bool, needs_targets: bool) -> numpy.ndarray:
    """This rank's part of the description: the input on the first stage, the targets on the last."""
    header = numpy.zeros(LENGTH, dtype=numpy.int64)
    if first:
        header[_INPUT_STATUS] = _status(x, MAX_FEATURE_DIMS + 1)
        if header[_INPUT_STATUS] == _OK:
            header[_ROWS], header[_NDIM], header[_DTYPE] = x.shape[0], x.ndim - 1, ord(x.dtype.char)
            header[_DIMS:_DIMS + x.ndim - 1] = x.shape[1:]
    if last and needs_targets:
        header[_TARGET_STATUS] = _status(y, None)
        if header[_TARGET_STATUS] == _OK:
            header[_TARGET_ROWS] = y.shape[0]
    return header


def plan_batch(header: numpy.ndarray, micro_batches: int, needs_targets: bool) -> BatchPlan:
    """The micro-batch plan from the combined description (identical on every rank).

    Raises:
        ValueError: when the input or targets are missing or malformed, their row counts
            differ, or there are fewer rows than micro-batches.
    """
    _raise_for_status(int(header[_INPUT_STATUS]), "the first stage", "input batch x")
    rows = int(header[_ROWS])
    if needs_targets:
        _raise_for_status(int(header[_TARGET_STATUS]), "the last stage", "targets y")
        if int(header[_TARGET_ROWS]) != rows:
            raise ValueError(f"the input has {rows} rows (first stage) but the targets have "
                             f"{int(header[_TARGET_ROWS])} (last stage); pass matching batches")
    feature_shape = tuple(int(size) for size in header[_DIMS:_DIMS + int(header[_NDIM])])
    dtype = numpy.dtype(chr(int(header[_DTYPE]))).str
    return BatchPlan(tuple(micro_batch_sizes(rows, micro_batches)), feature_shape, dtype)


def batch_rows(header: numpy.ndarray) -> int:
    """Rows of the input batch the combined description announces (0 when there is none)."""
    return int(header[_ROWS])


def _status(array: Any, max_ndim: int | None) -> int:
    if not is_array(array):
        return _NOT_AN_ARRAY
    if array.ndim == 0:
        return _NO_BATCH_DIMENSION
    if max_ndim is not None and array.ndim > max_ndim:
        return _TOO_MANY_DIMENSIONS
    return _OK


def _raise_for_status(status: int, where: str, what: str) -> None:
    if status == _NOT_AN_ARRAY:
        raise ValueError(f"{where} of the pipeline needs the {what} as a numpy or cupy array, and got none")
    if status == _NO_BATCH_DIMENSION:
        raise ValueError(f"the {what} on {where} must have a batch dimension, got a 0-d array")
    if status == _TOO_MANY_DIMENSIONS:
        raise ValueError(f"the {what} on {where} may have at most {MAX_FEATURE_DIMS + 1} dimensions")
