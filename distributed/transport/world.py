"""Where this process stands in the job: rank, size, place on its node, and whether it is the main rank."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from mpiprop.distributed.transport.communicator import Communicator, MpiComm, mpi_comm_of
from mpiprop.distributed.transport.gpu import gpu_count, use_gpu
from mpiprop.distributed.transport.launcher_environment import LocalRank, launcher_local_rank
from mpiprop.distributed.transport.mpi_library import load_mpi


@dataclass(frozen=True)
class NodePlacement:
    """Where a rank of MPI.COMM_WORLD sits on its node.

    Attributes:
        local_rank: its rank among the ranks on its node.
        local_size: ranks on its node.
        node_cores: cores the ranks of its node may run on together (the union of their affinity masks).
        rank_cores: cores this rank may run on (fewer where the launcher binds ranks to cores).
    """

    local_rank: int
    local_size: int
    node_cores: int
    rank_cores: int


_world_node: list[NodePlacement] = []


def rank(comm: "MpiComm | Communicator | None" = None) -> int:
    """This process's rank in `comm` (default MPI.COMM_WORLD); 0 in a plain `python script.py` run."""
    return mpi_comm_of(comm).Get_rank()


def size(comm: "MpiComm | Communicator | None" = None) -> int:
    """Number of ranks in `comm` (default MPI.COMM_WORLD); 1 in a plain `python script.py` run."""
    return mpi_comm_of(comm).Get_size()


def is_main_rank(comm: "MpiComm | Communicator | None" = None) -> bool:
    """True on rank 0, the one rank that should print, log and write checkpoints."""
    return rank(comm) == 0


def available_cores() -> set[int]:
    """The cores this process may run on (its affinity mask where the OS tells it, else all the CPUs)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:
        return set(range(os.cpu_count() or 1))


def world_node() -> NodePlacement:
    """This rank's place on its node in MPI.COMM_WORLD, from MPI's shared-memory split of it.

    Computed once: the first call is collective (`mpiprop.distributed.start()` makes it on every
    rank). Local ranks follow MPI's order of the node's ranks, as in a Communicator. The launcher's
    local ranks (see `launcher_local_rank`), which chose the GPUs under `mpiprop run` before MPI
    started, are checked: when they do not number the node's ranks 0 to N-1 each once (a variable
    inherited from a batch script gives every rank 0), the node's first rank warns, naming the variable.
    """
    if not _world_node:
        _world_node.append(_split_world_by_node())
    return _world_node[0]


def _split_world_by_node() -> NodePlacement:
    mpi = load_mpi()
    world, mine, told = mpi.COMM_WORLD, available_cores(), launcher_local_rank(os.environ)
    if world.Get_size() == 1:
        return NodePlacement(0, 1, len(mine), len(mine))
    node = world.Split_type(mpi.COMM_TYPE_SHARED, key=world.Get_rank())
    try:
        gathered = node.allgather((mine, None if told is None else told.value))
        told_ranks = [value for _, value in gathered]
        cores = len(set().union(*(cores for cores, _ in gathered)))
        numbered_once_each = None not in told_ranks and sorted(told_ranks) == list(range(node.Get_size()))
        if told is not None and not numbered_once_each and node.Get_rank() == 0:
            _warn_of_disagreement(told, told_ranks)
        return NodePlacement(node.Get_rank(), node.Get_size(), cores, len(mine))
    finally:
        node.Free()


def _warn_of_disagreement(told: LocalRank, told_ranks: list[int | None]) -> None:
    print_warning(f"{told.variable} (from {told.launcher}) gives the {len(told_ranks)} ranks on this node the local "
                  f"ranks {told_ranks}, not each its own of 0 to {len(told_ranks) - 1}, so they would share GPUs; "
                  f"numbering them in MPI's order instead. Was {told.variable} inherited from an outer launcher "
                  "or a batch script? Start the ranks with that launcher, or unset the variable")


def print_warning(message: str) -> None:
    """Print "mpiprop: warning: `message`" to stderr; a closed or broken stderr is ignored."""
    try:
        sys.stderr.write(f"mpiprop: warning: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def local_rank(comm: "MpiComm | Communicator | None" = None) -> int:
    """This process's rank among the ranks of `comm` on the same node (pick a GPU with it).

    With a Communicator the answer was computed when it was built; for COMM_WORLD (None) it
    comes from `world_node()`. Any other communicator is split by node here, which is
    collective: then every rank of `comm` must call this together.
    """
    if isinstance(comm, Communicator):
        return comm.local_rank
    if comm is None:
        return world_node().local_rank
    node = mpi_comm_of(comm).Split_type(load_mpi().COMM_TYPE_SHARED, key=rank(comm))
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
