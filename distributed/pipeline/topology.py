"""Topology: split the ranks into data-parallel replicas x pipeline stages x tensor-parallel ranks (3-D parallelism)."""
from __future__ import annotations

from dataclasses import dataclass

from mpiprop.distributed.transport.communicator import Communicator, MpiComm
from mpiprop.network.checks import positive_int


@dataclass
class Grid:
    """This rank's place in a grid of `replicas` pipelines of `stages` stages of `tensor` ranks each.

    Rank w of the grid's communicator `comm` is tensor rank `w % tensor` of stage
    `(w // tensor) % stages` of replica `w // (stages * tensor)`: the ranks that split one
    stage's layers are neighbours, then the stages of one pipeline. `pipeline_comm` holds the
    ranks of this replica with this tensor rank (in stage order); `data_comm` the ranks running
    the same stage and tensor rank in every replica (their gradients are averaged over it);
    `model_comm` every rank of this replica (stage-major, tensor rank within), which together
    hold one copy of the model.
    """

    comm: Communicator
    pipeline_comm: Communicator
    data_comm: Communicator
    model_comm: Communicator
    stage: int
    replica: int
    tensor_rank: int
    stages: int
    replicas: int
    tensor: int


def make_grid(stages: int | None, comm: "MpiComm | Communicator | None" = None, tensor: int = 1) -> Grid:
    """Split `comm` (default MPI.COMM_WORLD) into pipelines of `stages` stages of `tensor` ranks; collective.

    Args:
        stages: stages per pipeline; None: as many as the ranks allow (ranks / `tensor`), one replica.
        comm: the ranks to arrange.
        tensor: ranks that split each stage's layers (the tensor-parallel size).

    Returns:
        This rank's Grid, over a private clone of `comm`.

    Raises:
        ValueError: when `stages` x `tensor` does not divide the number of ranks.
    """
    tensor = positive_int(tensor, "tensor")
    stages = None if stages is None else positive_int(stages, "stages")
    base = Communicator(comm)
    stages = max(1, base.size // tensor) if stages is None else stages
    if base.size % (stages * tensor):
        size = base.size
        base.free()
        across = f"pipelines of {stages} stages" + (f" of {tensor} tensor-parallel ranks" if tensor > 1 else "")
        raise ValueError(f"{size} ranks cannot form {across}; use stages x tensor-parallel ranks that divide {size}")
    tensor_rank, stage, replica = base.rank % tensor, (base.rank // tensor) % stages, base.rank // (stages * tensor)
    pipeline_comm = base.split(color=replica * tensor + tensor_rank, key=stage)
    data_comm = base.split(color=stage * tensor + tensor_rank, key=replica)
    model_comm = base.split(color=replica, key=stage * tensor + tensor_rank)
    return Grid(base, pipeline_comm, data_comm, model_comm, stage, replica, tensor_rank, stages, data_comm.size, tensor)
