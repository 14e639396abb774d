"""GPU facts and helpers for the transport: which GPUs exist, pinned host memory, NCCL and the current stream."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy

from mpiprop.network.backend import Array, cupy, cupy_available, get_array_module


def gpu_count() -> int:
    """How many GPUs cupy sees (0 without cupy)."""
    return cupy.cuda.runtime.getDeviceCount() if cupy_available() else 0


def use_gpu(index: int) -> None:
    """Make GPU `index` current for this process's cupy arrays and kernels.

    Raises:
        ValueError: without cupy and a GPU, or for an index outside 0..gpu_count()-1.
    """
    count = gpu_count()
    if not 0 <= index < count:
        raise ValueError(f"GPU {index} does not exist: this process sees {count} GPU(s); "
                         "use an index below that, or run on the CPU")
    cupy.cuda.Device(index).use()


def current_gpu() -> int:
    """The index of the current GPU."""
    return cupy.cuda.Device().id


def pinned_empty(shape: tuple[int, ...], dtype: Any) -> numpy.ndarray:
    """An uninitialised host array in page-locked memory (fast GPU copies); plain memory without cupy."""
    if not cupy_available():
        return numpy.empty(shape, dtype=dtype)
    dtype = numpy.dtype(dtype)
    count = int(numpy.prod(shape))
    memory = cupy.cuda.alloc_pinned_memory(max(count * dtype.itemsize, 1))
    return numpy.frombuffer(memory, dtype=dtype, count=count).reshape(shape)


def copy_to_host(array: Array) -> numpy.ndarray:
    """A C-contiguous host copy of `array`; for a cupy array, in page-locked memory."""
    if get_array_module(array) is numpy:
        return numpy.array(array, copy=True, order="C")
    host = pinned_empty(array.shape, array.dtype)
    cupy.ascontiguousarray(array).get(out=host)
    return host


def nccl_module() -> ModuleType | None:
    """cupy's NCCL binding (`cupy.cuda.nccl`) when cupy, a GPU and NCCL are present, else None."""
    if not cupy_available():
        return None
    try:
        from cupy.cuda import nccl
    except ImportError:
        return None
    return nccl if getattr(nccl, "available", False) else None


def current_stream_pointer() -> int:
    """The raw handle of cupy's current CUDA stream, for libraries that enqueue work on it."""
    return cupy.cuda.get_current_stream().ptr
