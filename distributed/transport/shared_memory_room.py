"""Room for shared windows: whether /dev/shm can hold one, and whether making one is safe under this MPI."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mpiprop.distributed.transport.mpi_library import is_open_mpi

if TYPE_CHECKING:
    from mpiprop.distributed.transport.communicator import Communicator

SHARED_MEMORY_DIRECTORY = "/dev/shm"  # where MPICH and Open MPI keep the files behind shared windows on Linux
ROOM_MARGIN = 1.25  # free space wanted beyond the window itself (MPI's own shared segments live there too)
OPEN_MPI_ONE_SIDED_VARIABLE = "OMPI_MCA_osc"  # Open MPI's choice of one-sided components, read when MPI starts


def window_prints_errors() -> bool:
    """True under Open MPI unless its UCX one-sided component was left out when MPI started (`--mca osc ^ucx`,
    as `mpiprop run` passes): where UCX finds no network, that component prints an error on every rank for
    every window it is asked about, and it cannot be left out once MPI has started.
    """
    return is_open_mpi() and not leaves_out_ucx(os.environ.get(OPEN_MPI_ONE_SIDED_VARIABLE, ""))


def leaves_out_ucx(components: str) -> bool:
    """Whether an Open MPI component selection ("^ucx", "sm,rdma", "") leaves out the `ucx` component."""
    components = components.replace(" ", "")
    if components.startswith("^"):
        return "ucx" in components[1:].split(",")
    return bool(components) and "ucx" not in components.split(",")


def free_shared_memory_bytes() -> int | None:
    """Bytes free in SHARED_MEMORY_DIRECTORY (a tmpfs: 64 MB by default inside Docker); None where it does not exist."""
    try:
        stats = os.statvfs(SHARED_MEMORY_DIRECTORY)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def room_shortage(comm: "Communicator", needed: int, what_needs: str, instead: str, fix: str) -> str | None:
    """Why a window of `needed` bytes would not fit: the first rank of `comm` whose /dev/shm lacks
    ROOM_MARGIN x `needed` bytes, named with its free space, what needs them and what is done `instead`;
    None when every rank has room. Collective.

    Args:
        what_needs: e.g. "the shared copy of the parameters needs".
        instead: what the caller falls back to, e.g. "summing gradients with MPI's allreduce instead".
        fix: the other way out, after giving /dev/shm more room, e.g. "pass DataParallel(...,
            shared_memory=False)".
    """
    free = free_shared_memory_bytes()
    short_on = comm.allgather_object(None if free is None or free >= ROOM_MARGIN * needed else free)
    short = next(((rank, free) for rank, free in enumerate(short_on) if free is not None), None)
    if short is None:
        return None
    rank, free = short
    return (f"{SHARED_MEMORY_DIRECTORY} on rank {rank} has {free / 2**20:.0f} MiB free, less than {ROOM_MARGIN} x "
            f"the {needed / 2**20:.0f} MiB {what_needs}; {instead}. Give it more room (e.g. docker run "
            f"--shm-size=2g) or {fix}")
