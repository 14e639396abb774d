"""How gradients are reduced: an ordered list of candidates, the first that applies chosen, each other saying why not."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy

from mpiprop.distributed.data_parallel.bucket_allreduce_shared import shared_memory_shortage
from mpiprop.distributed.data_parallel.compression import NoCompression
from mpiprop.distributed.data_parallel.node_groups import NodeGroups, node_groups
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.shared_memory_room import window_prints_errors

SHARED_MEMORY = "shared memory"
HIERARCHICAL = "hierarchical"
MPI_ALLREDUCE = "mpi"
SHARED_MEMORY_REDUCE_SCATTER = "shared memory reduce-scatter"
MPI_REDUCE_SCATTER = "mpi reduce-scatter"
WHOLE_CANDIDATES = (SHARED_MEMORY, HIERARCHICAL, MPI_ALLREDUCE)
SHARDED_CANDIDATES = (SHARED_MEMORY_REDUCE_SCATTER, MPI_REDUCE_SCATTER)


@dataclass(frozen=True)
class ReductionFacts:
    """What decides the reduction. `nodes`, `largest_node` and `room_shortage` are None where not asked
    (an earlier fact already rules shared memory out).

    Attributes:
        ranks: ranks that reduce together.
        sharded: whether each rank keeps only its own parameters' gradients (ZeRO-2: reduce-scatter).
        on_cpu: whether the gradients are numpy arrays.
        float_dtypes: whether every bucket holds plain floats.
        compression: the compression object.
        shared_memory_asked: the `shared_memory` argument.
        window_prints_errors: Open MPI with its UCX one-sided component loaded.
        nodes: how many nodes the ranks span.
        largest_node: the most ranks on one node.
        room_shortage: why /dev/shm lacks room for the shared window, or None when it has room.
    """

    ranks: int
    sharded: bool = False
    on_cpu: bool = True
    float_dtypes: bool = True
    compression: NoCompression = field(default_factory=NoCompression)
    shared_memory_asked: bool = True
    window_prints_errors: bool = False
    nodes: int | None = None
    largest_node: int | None = None
    room_shortage: str | None = None


def shared_memory_obstacle(facts: ReductionFacts, *, room: bool = True) -> str | None:
    """Why memory shared by each node's ranks cannot hold the buckets, or None (`room`: count /dev/shm's room)."""
    if not facts.shared_memory_asked:
        return "shared_memory=False was passed"
    if facts.ranks == 1:
        return "one rank has nobody to share memory with"
    if not facts.on_cpu:
        return "the gradients are GPU arrays"
    if not facts.float_dtypes:
        return "a bucket holds other than plain floats"
    if not facts.compression.shared_memory:
        return f"shared memory cannot carry {facts.compression!r}"
    if facts.window_prints_errors:
        return "Open MPI's UCX one-sided component is loaded (mpiprop run passes --mca osc ^ucx)"
    if facts.largest_node == 1:
        return "every node holds one rank"
    if room and facts.room_shortage is not None:
        return facts.room_shortage
    return None


def why_not(candidate: str, facts: ReductionFacts) -> str | None:
    """Why `candidate` does not apply to `facts`, or None when it does."""
    if candidate in (MPI_ALLREDUCE, MPI_REDUCE_SCATTER):
        return None
    if (candidate in SHARDED_CANDIDATES) != facts.sharded:
        return "the gradients are sharded (ZeRO-2)" if facts.sharded else "the gradients are not sharded"
    obstacle = shared_memory_obstacle(facts)
    if obstacle is not None:
        return obstacle
    nodes = facts.nodes or 1
    if candidate == HIERARCHICAL:
        return None if nodes > 1 else "every rank is on one node"
    return None if nodes == 1 else f"the ranks span {nodes} nodes"


@dataclass(frozen=True)
class ReductionChoice:
    """The chosen reduction and, for every other candidate in order, why it was not chosen."""

    chosen: str
    reasons: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        lines = [f"gradient reduction: {self.chosen}"]
        lines += [f"  not {name}: {reason}" for name, reason in self.reasons]
        return "\n".join(lines)


def choose_reduction(facts: ReductionFacts) -> ReductionChoice:
    """The first candidate that applies (pure logic: no MPI).

    Returns:
        The choice, with a reason for each other candidate: why it does not apply, or that the chosen
        one ranks above it.
    """
    candidates = SHARDED_CANDIDATES if facts.sharded else WHOLE_CANDIDATES
    chosen = next(candidate for candidate in candidates if why_not(candidate, facts) is None)
    reasons = tuple((candidate, why_not(candidate, facts) or f"{chosen} ranks above it")
                    for candidate in candidates if candidate != chosen)
    return ReductionChoice(chosen, reasons)


def gather_facts(comm: Communicator, dtypes: Sequence[numpy.dtype], on_cpu: bool, compression: NoCompression,
                 shared_memory: bool, window_shortage: Callable[[int], str | None], sharded: bool = False
                 ) -> tuple[ReductionFacts, NodeGroups | None]:
    """The facts for `choose_reduction`, asking the ranks only what earlier facts leave open. Collective.

    Args:
        window_shortage: given the most ranks on one node, why /dev/shm lacks room for the shared window, or
            None (a collective), e.g. `whole_bucket_window_shortage(...)`.

    Returns:
        (facts, the node groups when shared memory may serve; the caller frees them or keeps them).
    """
    facts = ReductionFacts(ranks=comm.size, sharded=sharded, on_cpu=on_cpu,
                           float_dtypes=all(numpy.dtype(dtype).kind == "f" for dtype in dtypes),
                           compression=compression, shared_memory_asked=shared_memory,
                           window_prints_errors=window_prints_errors())
    if not dtypes or shared_memory_obstacle(facts) is not None:
        return facts, None
    groups = node_groups(comm)
    largest_node = comm.allreduce_object(groups.node.size, op="max")
    facts = replace(facts, nodes=groups.nodes, largest_node=largest_node)
    if largest_node > 1 and not (sharded and groups.nodes > 1):
        facts = replace(facts, room_shortage=window_shortage(largest_node))
    return facts, groups


def whole_bucket_window_shortage(comm: Communicator, sizes: Sequence[int],
                                 dtypes: Sequence[numpy.dtype]) -> Callable[[int], str | None]:
    """`window_shortage` for `gather_facts` over whole buckets of `sizes` elements of `dtypes`."""
    return lambda largest_node: shared_memory_shortage(comm, sizes, dtypes, largest_node)


def warn_of_shortage(facts: ReductionFacts, comm: Communicator) -> None:
    """On rank 0, warn when only /dev/shm's room kept shared memory out (with the sizes and the fix)."""
    if facts.room_shortage is not None and shared_memory_obstacle(facts, room=False) is None and comm.is_main:
        warnings.warn(facts.room_shortage, RuntimeWarning, stacklevel=5)
