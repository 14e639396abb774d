"""node_groups: the ranks of a communicator grouped by node, real or pretended (MPIPROP_PRETEND_NODES)."""
from __future__ import annotations

import os
from dataclasses import dataclass

from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.mpi_library import world_rank_and_size

PRETEND_NODES_VARIABLE = "MPIPROP_PRETEND_NODES"


@dataclass
class NodeGroups:
    """This rank's node and, on the first rank of each node, the node leaders.

    Attributes:
        node: the ranks of `comm` on this rank's node, in rank order.
        leaders: the first rank of every node, in rank order; None on the other ranks.
        nodes: how many nodes the ranks of `comm` span.
    """

    node: Communicator
    leaders: Communicator | None
    nodes: int

    def free(self) -> None:
        """Release both communicators (collective over `comm`)."""
        self.node.free()
        if self.leaders is not None:
            self.leaders.free()


def pretend_nodes() -> int | None:
    """MPIPROP_PRETEND_NODES as a number of nodes, or None when it is unset.

    With it, the ranks of MPI.COMM_WORLD count as that many nodes of equal size, in rank order
    (4 ranks and 2: ranks 0-1 and 2-3), so several nodes can be tried on one machine.

    Raises:
        ValueError: when it is not a positive integer dividing the number of ranks.
    """
    text = os.environ.get(PRETEND_NODES_VARIABLE)
    if text is None:
        return None
    ranks = world_rank_and_size()[1]
    if not text.strip().isdigit() or int(text) < 1 or ranks % int(text):
        raise ValueError(f"{PRETEND_NODES_VARIABLE}={text!r} must be a positive integer dividing the {ranks} ranks "
                         f"of the job, e.g. {PRETEND_NODES_VARIABLE}=2 for 4 ranks as 2 nodes of 2")
    return int(text)


def node_groups(comm: Communicator) -> NodeGroups:
    """Group the ranks of `comm` by node (shared memory), or by pretend node when MPIPROP_PRETEND_NODES is set.

    Collective over `comm`.

    Raises:
        ValueError: on every rank, for a malformed MPIPROP_PRETEND_NODES.
    """
    nodes = pretend_nodes()
    if nodes is None:
        node = comm.split_by_node()
    else:
        world_rank, world_size = world_rank_and_size()
        node = comm.split(world_rank * nodes // world_size)
    is_leader = node.rank == 0
    leaders = comm.split(0 if is_leader else None)
    return NodeGroups(node, leaders, comm.allreduce_object(int(is_leader)))
