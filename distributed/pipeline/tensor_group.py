"""The tensor ranks of a pipeline stage: their group's place in the grid, and the state they must hold alike."""
from __future__ import annotations

from typing import Callable, Iterable

from mpiprop.distributed.tensor_parallel.sequence_parallel import shard_counts
from mpiprop.distributed.tensor_parallel.split import Split
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import Array
from mpiprop.network.compute import rng
from mpiprop.network.layers.dropout import Dropout
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.layers.sequential import Sequential


def check_tensor_group(comm: Communicator, tensor_comm: Communicator, tensor_rank: int) -> None:
    """Raise on every rank unless the split layers' group is the grid's: T consecutive ranks of `comm`; collective.

    Args:
        comm: every rank of the pipeline strategy.
        tensor_comm: the group the model's tensor-parallel layers were built over.
        tensor_rank: this rank's tensor rank in the grid.

    Raises:
        ValueError: on every rank of `comm`, when any rank's group does not fit the grid.
    """
    first = comm.rank - tensor_rank
    members = tensor_comm.allgather_object(comm.rank)
    fits = tensor_comm.rank == tensor_rank and members == list(range(first, first + tensor_comm.size))
    if not all(comm.allgather_object(fits)):
        raise ValueError(f"Pipeline: the model's tensor-parallel layers are split over groups that are not "
                         f"{tensor_comm.size} consecutive ranks of the pipeline's communicator; build "
                         "them with tensor_parallel_group(T, comm) over the communicator given to Pipeline")


def rows_between_stages(model: Sequential, tensor_comm: Communicator | None) -> Callable[[int], int]:
    """The rows of the activation a stage receives for a micro-batch of so many rows: all of them, or this
    tensor rank's shard under sequence parallelism (its split layers' activations are cut by rows)."""
    if tensor_comm is None or not any(getattr(layer, "sequence_parallel", False) for layer in model.descendants()):
        return lambda rows: rows
    return lambda rows: shard_counts(rows, tensor_comm.size)[tensor_comm.rank]


def check_draws_alike(chunks: list[Sequential], tensor_comm: Communicator, stage_index: int) -> None:
    """Raise on the stage's tensor ranks when they would draw different dropout masks for the activations
    they hold alike, so that their copies of the unsplit layers would part ways; collective over them.

    Raises:
        ValueError: when the stage holds dropout and its tensor ranks' random seeds differ.
    """
    draws = any(isinstance(layer, Dropout) for chunk in chunks for layer in chunk.descendants())
    seeds = tensor_comm.allgather_object(rng.get_rng_state()["seed"] if draws else None)
    if len(set(seeds)) > 1:
        raise ValueError(f"the tensor ranks of stage {stage_index} draw dropout masks from different seeds "
                         f"({seeds}), so they would drop different units of the activations they hold alike; "
                         "seed them alike, e.g. nn.manual_seed(seed + pipe.replica) instead of seed + rank")


def agree_within_tensor_group(named: Iterable[tuple[str, Parameter | Array]], splits: dict[str, Split],
                              tensor_comm: Communicator) -> None:
    """The state that every tensor rank of a stage holds whole (unsplit layers, row-parallel biases)
    takes the group's first rank's values, so each line of the pipeline trains the same model; collective.

    Args:
        named: the stage's parameters and buffers under their whole-model names.
        splits: the names of the split parameters (each rank holds its own share of those).
        tensor_comm: the stage's tensor ranks.
    """
    for name, array in named:
        if name not in splits:
            tensor_comm.bcast(array.data if isinstance(array, Parameter) else array, root=0)
