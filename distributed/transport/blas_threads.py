"""BLAS threads per rank: the node's cores divided by the ranks on it, unless the user chose a thread count."""
from __future__ import annotations

import os
from typing import MutableMapping

from mpiprop.distributed.transport.world import NodePlacement, print_warning
from mpiprop.network.compute.threads import THREAD_VARIABLES, limit_threads, user_thread_setting

__all__ = ["THREAD_VARIABLES", "user_thread_setting", "threads_per_rank", "set_blas_threads",
           "oversubscription_warning", "place_threads"]


def threads_per_rank(node: NodePlacement) -> int:
    """The node's cores divided by the ranks on it, at most the cores this rank may use, at least 1."""
    return max(1, min(node.rank_cores, node.node_cores // node.local_size))


def set_blas_threads(node: NodePlacement, environ: MutableMapping[str, str] = os.environ) -> int | None:
    """Limit this rank's BLAS and OpenMP threads to `threads_per_rank(node)`, unless the user set a count
    (MPIPROP_THREADS or one of THREAD_VARIABLES; see `mpiprop.network.compute.threads`).

    Without a limit each rank's BLAS starts a thread per core, and the ranks of a node fight
    over the same cores (20 to 60 times slower for a small MLP on 2 ranks). The limit applies to
    the libraries already loaded and, through THREAD_VARIABLES, to those loaded later (`limit_threads`).

    Args:
        node: this rank's place on its node.
        environ: the environment to read the user's setting from and to write the limit into.

    Returns:
        The threads set, or None when one of THREAD_VARIABLES was already set (the user's choice stands).
    """
    if user_thread_setting(environ) is not None:
        return None
    threads = threads_per_rank(node)
    limit_threads(threads, environ)
    return threads


def oversubscription_warning(node: NodePlacement) -> str | None:
    """Why the ranks of this node will run slowly (more of them than cores), or None when they fit."""
    if node.local_size <= node.node_cores:
        return None
    return (f"{node.local_size} ranks share {node.node_cores} cores on this node, so they take turns and each "
            f"runs slower than it would alone; start at most {node.node_cores} ranks per node (e.g. "
            f"`mpiexec -n {node.node_cores}`), or spread them over more nodes with a hostfile")


def place_threads(node: NodePlacement) -> None:
    """Set this rank's BLAS threads, and warn once per node (from its local rank 0) when it is oversubscribed."""
    set_blas_threads(node)
    warning = oversubscription_warning(node)
    if warning is not None and node.local_rank == 0:
        print_warning(warning)
