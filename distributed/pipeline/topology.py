"""Topology: split the ranks into pipeline groups x data-parallel groups (2-D parallelism)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from mpiprop.distributed.transport.communicator import Communicator, MpiComm
from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.checks import positive_int
from mpiprop.network.parameter import Parameter


@dataclass
class Grid:
    """This rank's place in a grid of `replicas` pipelines of `stages` ranks each.

    Rank w of the grid's communicator is stage `w % stages` of replica `w // stages`, so
    the stages of one pipeline are neighbouring ranks. `pipeline_comm` holds the ranks of
    this replica's pipeline (in stage order: give it to `Pipeline`); `data_comm` holds the
    ranks running the same stage in every replica (average gradients over it).
    """

    pipeline_comm: Communicator
    data_comm: Communicator
    stage: int
    replica: int
    stages: int
    replicas: int

    def average_gradients(self, parameters: Iterable[Parameter]) -> None:
        """Replace each gradient by its mean over the replicas (one allreduce per dtype); collective over `data_comm`."""
        average_gradients(parameters, self.data_comm)

    def sync_buffers(self, buffers: Iterable[tuple[str, Array]]) -> None:
        """Overwrite each buffer (BatchNorm running statistics) with replica 0's; collective over `data_comm`.

        Each replica's training updates its buffers from its own rows; call this before evaluating
        or writing a checkpoint so every replica holds the same ones, as DataParallel does.

        Args:
            buffers: (name, array) pairs, e.g. `pipe.named_buffers()`, in the same order on every replica.
        """
        for _, buffer in buffers:
            self.data_comm.bcast(buffer, root=0)


def make_grid(stages: int, comm: "MpiComm | Communicator | None" = None) -> Grid:
    """Split `comm` (default MPI.COMM_WORLD) into pipelines of `stages` ranks; collective.

    Args:
        stages: ranks per pipeline; must divide the number of ranks.
        comm: the ranks to arrange.

    Raises:
        ValueError: when `stages` does not divide the number of ranks.
    """
    stages = positive_int(stages, "stages")
    base = Communicator(comm)
    if base.size % stages:
        raise ValueError(f"{base.size} ranks cannot form pipelines of {stages} stages; "
                         f"use a number of stages that divides {base.size}")
    stage, replica = base.rank % stages, base.rank // stages
    pipeline_comm = base.split(color=replica, key=stage)
    data_comm = base.split(color=stage, key=replica)
    base.free()
    return Grid(pipeline_comm, data_comm, stage, replica, stages, data_comm.size)


def average_gradients(parameters: Iterable[Parameter], comm: Communicator) -> None:
    """Average each parameter's gradient over the ranks of `comm`, in place; collective.

    Gradients of one dtype travel in one flat buffer, so a stage costs one allreduce.
    """
    groups: dict[str, list[Parameter]] = {}
    for p in parameters:
        groups.setdefault(str(p.grad.dtype), []).append(p)
    for params in groups.values():
        xp = get_array_module(params[0].grad)
        flat = xp.concatenate([p.grad.ravel() for p in params])
        comm.allreduce(flat)
        flat *= flat.dtype.type(1.0 / comm.size)
        offset = 0
        for p in params:
            p.grad[...] = flat[offset:offset + p.size].reshape(p.shape)
            offset += p.size
