"""The communicators of a pipeline: its stages, the replicas of its stage, its tensor group and all of its ranks."""
from __future__ import annotations

from dataclasses import dataclass

from mpiprop.distributed.pipeline.tensor_group import check_tensor_group
from mpiprop.distributed.pipeline.topology import make_grid
from mpiprop.distributed.transport.communicator import Communicator, MpiComm


@dataclass
class PipelineComms:
    """Where a pipeline's rank stands: `pipeline_comm` holds this pipeline's stages; `data_comm` this stage's
    replicas (None for one); `model_comm` the ranks holding this copy of the model; `tensor_comm` this stage's
    tensor-parallel ranks (None without split layers); `comm` every rank of the strategy."""

    comm: Communicator
    pipeline_comm: Communicator
    model_comm: Communicator
    data_comm: Communicator | None
    replica: int
    replicas: int
    tensor_comm: Communicator | None
    tensor_rank: int
    tensor_size: int


def join_ranks(comm: "MpiComm | Communicator | None", stages: int | None,
               tensor_comm: Communicator | None) -> PipelineComms:
    """The communicators of this rank's pipeline: all of `comm` as the stages, or a grid of pipelines; collective.

    Args:
        comm: the ranks of the strategy (None: all of MPI.COMM_WORLD).
        stages: stages per pipeline, or None for every rank (divided by the tensor group's size).
        tensor_comm: the group that splits the model's tensor-parallel layers, or None.

    Returns:
        the pipeline's communicators and this rank's replica and tensor rank.

    Raises:
        ValueError: on every rank, when `stages` does not divide the ranks or the tensor group is not
            T consecutive ranks of `comm`.
    """
    if stages is None and tensor_comm is None:
        whole = Communicator(comm)
        return PipelineComms(whole, whole, whole, None, 0, 1, None, 0, 1)
    grid = make_grid(stages, comm, 1 if tensor_comm is None else tensor_comm.size)
    tensor_rank, tensor_size = 0, 1
    if tensor_comm is not None:
        check_tensor_group(grid.comm, tensor_comm, grid.tensor_rank)
        tensor_rank, tensor_size = grid.tensor_rank, grid.tensor
    return PipelineComms(grid.comm, grid.pipeline_comm, grid.model_comm,
                         None if grid.replicas == 1 else grid.data_comm, grid.replica, grid.replicas,
                         tensor_comm, tensor_rank, tensor_size)
