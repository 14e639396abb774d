"""Hand arrays to MPI: directly when MPI can read them, else through a host copy (page-locked for GPU arrays)."""
from __future__ import annotations

import ctypes
import functools
import os
from typing import Callable

import numpy

from mpiprop.distributed.transport.gpu import copy_to_host, pinned_empty
from mpiprop.network.backend import Array, device_of, synchronize, to_device

CUDA_AWARE_ENV = "MPIPROP_CUDA_AWARE_MPI"

CopyBack = Callable[[], None]


def mpi_cuda_aware() -> bool:
    """Whether the MPI library can read and write GPU memory directly.

    Order of evidence: the environment variable MPIPROP_CUDA_AWARE_MPI ("1"/"0") when set;
    mpi4py's `MPI.Query_cuda_support()` where it exists; the library's own
    `MPIX_Query_cuda_support()` (MPICH, Open MPI) found through the loaded libmpi; else False.
    """
    override = os.environ.get(CUDA_AWARE_ENV)
    if override is not None:
        return override.strip().lower() in ("1", "true", "yes")
    from mpi4py import MPI

    query = getattr(MPI, "Query_cuda_support", None)
    if query is not None:
        return bool(query())
    return _libmpi_reports_cuda_support()


@functools.cache  # the library loaded stays for the process: ask it once
def _libmpi_reports_cuda_support() -> bool:
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libmpi" in line and "/" in line}
    except OSError:
        return False
    for path in sorted(paths):
        try:
            return bool(ctypes.CDLL(path).MPIX_Query_cuda_support())
        except (OSError, AttributeError):
            continue
    return False


def must_stage(array: Array, cuda_aware: bool, force: bool = False) -> bool:
    """True when `array` has to go through a contiguous host copy before MPI touches it.

    That is: always when `force`; for a GPU array when MPI is not CUDA-aware; for any
    array that is not C-contiguous (MPI buffers are flat).
    """
    if force or not array.flags.c_contiguous:
        return True
    return device_of(array) != "cpu" and not cuda_aware


def send_buffer(array: Array, stage: bool) -> Array:
    """What MPI should read: `array` itself (after the GPU finished writing it) or a host copy."""
    if stage:
        return copy_to_host(array)
    synchronize(array)
    return array


def receive_buffer(array: Array, stage: bool, *, keep_contents: bool) -> tuple[Array, CopyBack | None]:
    """What MPI should write, and the copy back into `array` to run once MPI is done (None if direct).

    Args:
        array: the destination the caller sees.
        stage: whether MPI writes into a host copy instead (see `must_stage`).
        keep_contents: whether the buffer must start with `array`'s values (in-place reductions).
    """
    if not stage:
        synchronize(array)
        return array, None
    if keep_contents:
        host = copy_to_host(array)
    elif device_of(array) == "cpu":
        host = numpy.empty(array.shape, dtype=array.dtype)
    else:
        host = pinned_empty(array.shape, array.dtype)

    def copy_back() -> None:
        array[...] = to_device(host, device_of(array))

    return host, copy_back

