"""Topology: split the ranks into pipeline groups x data-parallel groups (2-D parallelism)."""
from __future__ import annotations

from dataclasses import dataclass

from mpiprop.distributed.transport.communicator import Communicator, MpiComm
from mpiprop.network.checks import positive_int


@dataclass
class Grid:
    """This rank's place in a grid of `replicas` pipelines of `stages` ranks each.

    Rank w of the grid's communicator `comm` is stage `w % stages` of replica `w // stages`,
    so the stages of one pipeline are neighbouring ranks. `pipeline_comm` holds the ranks of
    this replica's pipeline (in stage order); `data_comm` holds the ranks running the same
    stage in every replica (their gradients are averaged over it).
    """

    comm: Communicator
    pipeline_comm: Communicator
    data_comm: Communicator
    stage: int
    replica: int
    stages: int
    replicas: int


def make_grid(stages: int, comm: "MpiComm | Communicator | None" = None) -> Grid:
    """Split `comm` (default MPI.COMM_WORLD) into pipelines of `stages` ranks; collective.

    Args:
        stages: ranks per pipeline; must divide the number of ranks.
        comm: the ranks to arrange.

    Returns:
        This rank's Grid, over a private clone of `comm`.

    Raises:
        ValueError: when `stages` does not divide the number of ranks.
    """
    stages = positive_int(stages, "stages")
    base = Communicator(comm)
    if base.size % stages:
        size = base.size
        base.free()
        raise ValueError(f"{size} ranks cannot form pipelines of {stages} stages; "
                         f"use a number of stages that divides {size}")
    stage, replica = base.rank % stages, base.rank // stages
    pipeline_comm = base.split(color=replica, key=stage)
    data_comm = base.split(color=stage, key=replica)
    return Grid(base, pipeline_comm, data_comm, stage, replica, stages, data_comm.size)
