"""Building a pipeline's stages: how many layers each holds, and rank 0's values in every one."""
from __future__ import annotations

from typing import Any, Sequence

from mpiprop.distributed.pipeline.partition import balance_costs, check_balance, measure_layer_times, parameter_counts
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import Array, is_array
from mpiprop.network.layers.sequential import Sequential

BALANCE_RULES = ("parameters", "time")


def resolve_balance(model: Sequential, balance: Sequence[int] | str | None, sample_input: Array | None, parts: int,
                    comm: Communicator, tensor_parallel: bool) -> list[int]:
    """The layers of each of `parts` virtual stages, from counts or a rule; collective over `comm` for "time".

    Args:
        model: the whole model.
        balance: layer counts per virtual stage, None or "parameters" (balance the parameter count)
            or "time" (balance the forward+backward time measured on `sample_input` on rank 0).
        sample_input: one micro-batch of input, needed on rank 0 of `comm` for "time".
        parts: stages x virtual stages.
        comm: every rank of the strategy (they all take rank 0's measurement).
        tensor_parallel: whether the model holds tensor-parallel layers (which "time" cannot run alone).

    Returns:
        the number of layers of each virtual stage, in virtual-stage order.

    Raises:
        ValueError: for an unknown rule, counts that do not fit the model, or "time" that cannot measure.
    """
    if balance is None or balance == "parameters":
        return balance_costs(parameter_counts(model), parts)
    if balance == "time":
        return balance_costs(_layer_times_from_rank_zero(model, sample_input, comm, tensor_parallel), parts)
    if isinstance(balance, str):
        raise ValueError(f"unknown balance rule {balance!r}; use one of {BALANCE_RULES} or a list of layer counts")
    return check_balance(balance, len(model), parts)


def _layer_times_from_rank_zero(model: Sequential, sample_input: Array | None, comm: Communicator,
                                tensor_parallel: bool) -> list[float]:
    """Every pipeline of the grid takes rank 0's measurement, so all of them cut the model alike."""
    if tensor_parallel:
        raise ValueError("balance='time' times the layers on one rank, which tensor-parallel layers cannot run "
                         "alone; give balance as layer counts per stage or 'parameters'")
    times: Any = None
    if comm.rank == 0:
        if is_array(sample_input):
            times = measure_layer_times(model, sample_input)
        else:
            times = "balance='time' needs sample_input (one micro-batch of input) on rank 0"
    times = comm.bcast_object(times, root=0)
    if isinstance(times, str):
        raise ValueError(times)
    return times


def receive_parameters_from_rank_zero(model: Sequential, all_ranges: list[tuple[int, int]],
                                      pipeline_comm: Communicator) -> None:
    """Overwrite each rank's stage with rank 0's values, so the pipeline trains rank 0's model; collective.

    Args:
        model: the whole model, whose layers the stages share.
        all_ranges: the (start, stop) layers of every virtual stage, in virtual-stage order.
        pipeline_comm: the pipeline's stages; virtual stage v lives on rank v % size.
    """
    for stage, (start, stop) in enumerate(all_ranges):
        owner = stage % pipeline_comm.size
        if owner == 0 or pipeline_comm.rank not in (0, owner):
            continue
        for index, array in enumerate(_state_arrays(model[start:stop])):
            if pipeline_comm.rank == 0:
                pipeline_comm.send(array, owner, tag=index)
            else:
                pipeline_comm.recv(array, 0, tag=index)


def _state_arrays(layers: Sequential) -> list[Array]:
    arrays = [p.data for p in layers.parameters()]
    return arrays + [buffer for _, buffer in layers.named_buffers()]
