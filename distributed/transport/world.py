"""Where this process stands in the job: rank, size, node-local rank, and whether it is the main rank."""
from __future__ import annotations

import os

from mpi4py import MPI

from mpiprop.distributed.transport.communicator import Communicator, MpiComm, mpi_comm_of
from mpiprop.distributed.transport.gpu import gpu_count, use_gpu

LOCAL_RANK_ENV_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK", "SLURM_LOCALID")


def rank(comm: "MpiComm | Communicator | None" = None) -> int:
    """This process's rank in `comm` (default MPI.COMM_WORLD); 0 in a plain `python script.py` run."""
    return mpi_comm_of(comm).Get_rank()


def size(comm: "MpiComm | Communicator | None" = None) -> int:
    """Number of ranks in `comm` (default MPI.COMM_WORLD); 1 in a plain `python script.py` run."""
    return mpi_comm_of(comm).Get_size()


def is_main_rank(comm: "MpiComm | Communicator | None" = None) -> bool:
    """True on rank 0, the one rank that should print, log and write checkpoints."""
    return rank(comm) == 0


def local_rank(comm: "MpiComm | Communicator | None" = None) -> int:
    """This process's rank among the ranks of `comm` on the same node (pick a GPU with it).

    With a Communicator the answer was computed when it was built. Otherwise the launcher's
    environment (MPI_LOCALRANKID of MPICH hydra, OMPI_COMM_WORLD_LOCAL_RANK of Open MPI,
    SLURM_LOCALID, ...) answers for COMM_WORLD; failing that, a shared-memory split of `comm`
    does, which is collective: then every rank of `comm` must call this together.
    """
    if isinstance(comm, Communicator):
        return comm.local_rank
    if comm is None:
        for name in LOCAL_RANK_ENV_VARS:
            if os.environ.get(name, "").isdigit():
                return int(os.environ[name])
    node = mpi_comm_of(comm).Split_type(MPI.COMM_TYPE_SHARED, key=rank(comm))
    try:
        return node.Get_rank()
    finally:
        node.Free()


def bind_gpu(comm: "MpiComm | Communicator | None" = None) -> int:
    """Make GPU `local_rank % gpu_count()` current for this process's cupy work; returns its index.

    Call it before moving a model to the GPU. With one GPU per rank each rank gets its own;
    with more ranks than GPUs, ranks share them round-robin (and their collectives go
    through host memory, since NCCL needs one GPU per rank).

    Raises:
        ValueError: when cupy sees no GPU.
    """
    count = gpu_count()
    if count == 0:
        raise ValueError("bind_gpu needs cupy and at least one GPU; run on the CPU (device 'cpu') instead")
    index = local_rank(comm) % count
    use_gpu(index)
    return index
