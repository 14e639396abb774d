"""The tensor-parallel group: consecutive ranks of a communicator that together hold each split layer."""
from __future__ import annotations

from mpiprop.distributed.reliability.consistency import check_agreement
from mpiprop.distributed.reliability.job_guards import start
from mpiprop.distributed.transport.communicator import Communicator, MpiComm, as_communicator


def tensor_parallel_group(size: int, comm: "MpiComm | Communicator | None" = None, *,
                          shared_memory: bool = True) -> Communicator:
    """Split `comm` into groups of `size` consecutive ranks; returns this rank's group. Collective.

    Ranks 0..size-1 form the first group, size..2*size-1 the second, and so on; the groups
    side by side can then be data-parallel replicas of one another. When a group's ranks share
    a node, its sums and gathers of activations go through a window they share
    (`Communicator.share_memory`): the same numbers as MPI's collectives, sooner.

    Args:
        size: ranks per group (the tensor-parallel size T).
        comm: the communicator to split (a Communicator, an mpi4py communicator, or None for the world).
        shared_memory: False keeps every collective of the group in MPI.

    Returns:
        A Communicator over this rank's group; `close()` it (or use it in a `with` block) to release it.

    Raises:
        ValueError: on every rank, when the ranks pass different sizes; when `size` is not positive or does
            not divide the number of ranks.
    """
    start()
    base = as_communicator(comm)
    ranks = base.size
    try:
        check_agreement(base, "tensor_parallel_group", {"size": size, "shared_memory": bool(shared_memory)})
        if not isinstance(size, int) or size < 1 or ranks % size:
            raise ValueError(f"a tensor-parallel size of {size!r} does not divide the {ranks} ranks; "
                             f"use a divisor of {ranks}")
    except ValueError:
        if base is not comm:  # every rank raises: freeing the clone made here is collective-safe
            base.free()
        raise
    group = base.split(color=base.rank // size)
    if base is not comm:  # a clone made here: the group outlives it
        base.detach(group)
        base.free()
    if shared_memory:
        group.share_memory()
    return group


def require_group(group: object, owner: str) -> Communicator:
    """`group`, checked to be the tensor-parallel Communicator that `owner` (a name for messages) needs.

    Raises:
        TypeError: when `group` is not a Communicator.
    """
    if not isinstance(group, Communicator):
        raise TypeError(f"{owner} needs the tensor-parallel group as a Communicator "
                        f"(tensor_parallel_group(size)), got {type(group).__name__}")
    return group
