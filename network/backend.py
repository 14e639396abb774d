"""The array-module switch: numpy always, cupy when it is installed and a GPU is present."""
from __future__ import annotations

import contextlib
import functools
from types import ModuleType
from typing import Any, Iterator

import numpy

try:  # cupy is optional; nothing else in the project imports it.
    import cupy
except Exception:  # ImportError, or a CUDA driver problem at import time
    cupy = None

Array = Any  # a numpy.ndarray or a cupy.ndarray


def cupy_available() -> bool:
    """True when cupy imports and sees at least one GPU."""
    if cupy is None:
        return False
    try:
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def get_array_module(*arrays: Any) -> ModuleType:
    """Return cupy if any argument is a cupy array, else numpy."""
    if cupy is not None:
        return cupy.get_array_module(*arrays)
    return numpy


def is_array(value: Any) -> bool:
    """True for a numpy or cupy ndarray."""
    return isinstance(value, numpy.ndarray) or (cupy is not None and isinstance(value, cupy.ndarray))


def module_for_device(device: str) -> ModuleType:
    """Map a device name ("cpu", "cuda", "gpu") to its array module.

    Raises:
        ValueError: for an unknown name, or "cuda" without cupy and a GPU.
    """
    if device == "cpu":
        return numpy
    if device in ("cuda", "gpu"):
        if not cupy_available():
            raise ValueError(f"device {device!r} needs cupy and a GPU; install mpiprop[gpu] or use device='cpu'")
        return cupy
    raise ValueError(f"unknown device {device!r}; use 'cpu' or 'cuda'")


def device_of(array: Array) -> str:
    """"cuda" for a cupy array, "cpu" otherwise."""
    return "cpu" if get_array_module(array) is numpy else "cuda"


def to_device(array: Array, device: str) -> Array:
    """Copy an array to "cpu" (numpy) or "cuda" (cupy); a no-op when it is already there."""
    xp = module_for_device(device)
    if get_array_module(array) is xp:
        return array
    return cupy.asarray(array) if xp is not numpy else cupy.asnumpy(array)


def to_numpy(array: Array) -> numpy.ndarray:
    """A numpy view or copy of any array."""
    return to_device(array, "cpu") if is_array(array) else numpy.asarray(array)


def erf(x: Array) -> Array:
    """The error function, elementwise, on the array's own device."""
    if get_array_module(x) is numpy:
        import scipy.special  # imported on first use: it is slow to load and only GELU needs it
        return scipy.special.erf(x)
    import cupyx.scipy.special
    return cupyx.scipy.special.erf(x)


def synchronize(array: Array) -> None:
    """Wait for the GPU work that produces `array`; nothing to do for numpy."""
    if get_array_module(array) is not numpy:
        cupy.cuda.get_current_stream().synchronize()









@contextlib.contextmanager
def tensor_core_float32(xp: ModuleType) -> Iterator[None]:
    """Inside the block, cupy's float32 products may use TF32 tensor cores; nothing changes for numpy."""
    if xp is numpy:
        yield
        return
    from cupy._core import _routines_linalg as linalg  # where cupy keeps its per-dtype compute type

    before = linalg.get_compute_type(numpy.float32)
    linalg.set_compute_type(numpy.float32, linalg.COMPUTE_TYPE_TF32)
    try:
        yield
    finally:
        linalg.set_compute_type(numpy.float32, before)


@functools.lru_cache(maxsize=None)
def elementwise_kernel(in_params: str, out_params: str, operation: str, name: str) -> Any:
    """A compiled cupy elementwise kernel (one GPU pass for a whole chain of operations).

    Compiled on first use and cached. Only for cupy arrays: callers keep a numpy path.
    """
    return cupy.ElementwiseKernel(in_params, out_params, operation, name)


def gpu_add_matmul_(out: Array, a: Array, b: Array) -> bool:
    """out += a @ b in one cuBLAS gemm (beta = 1) when the layout allows; returns whether it did.

    Handles the weight-gradient layout: `out` and `b` C-contiguous, `a` the transpose of a
    C-contiguous array. cuBLAS is column-major, so it updates out.T += b.T @ a.T.
    """
    if not (out.flags.c_contiguous and b.flags.c_contiguous and a.T.flags.c_contiguous):
        return False
    if not (out.dtype == a.dtype == b.dtype and out.dtype.char in "fd") or 0 in a.shape + b.shape:
        return False
    import cupy.cublas

    cupy.cublas.gemm("T", "N", b, a.T, out=out.T, beta=1.0)
    return True
