"""Find the layer of a pipelined model where a forward pass first yields NaN or Inf, stage by stage."""
from __future__ import annotations

from typing import Any

from mpiprop.distributed.reliability.waits import waiting_in
from mpiprop.network.backend import Array
from mpiprop.network.training.non_finite import is_finite

SEARCH_TAG = 7919  # on the pipeline's private communicator, apart from the schedule's messages


def first_non_finite_stage_layer(pipe: Any, x: Array | None) -> str:
    """Run `x` through the pipeline's virtual stages in order, one rank at a time; collective.

    Each virtual stage runs its layers one by one on the activation it receives and checks
    each output; the first non-finite one is named with its whole-model index and its rank.
    A diagnosis after the fact: it draws new dropout masks.

    Args:
        pipe: the Pipeline.
        x: the input batch on the first stage (ignored elsewhere).

    Returns:
        On every rank, e.g. "layer 3 (Linear(16, 16)) on rank 1 (stage 1 of 2)", or "the input batch".
    """
    comm = pipe.pipeline_comm
    stages = pipe.num_stages
    carried: tuple[Array | None, str | None] = (x, None if x is None or is_finite(x) else "the input batch")
    last_owner = (len(pipe.chunks) * stages - 1) % stages
    for virtual_stage in range(len(pipe.chunks) * stages):
        owner = virtual_stage % stages
        if owner != pipe.stage_index:
            continue
        if virtual_stage > 0:
            with waiting_in(f"receive of an activation from stage {(virtual_stage - 1) % stages} (NaN search)"):
                carried = comm.recv_object((virtual_stage - 1) % stages, SEARCH_TAG)
        carried = _search_chunk(pipe, virtual_stage // stages, *carried)
        if virtual_stage < len(pipe.chunks) * stages - 1:
            comm.send_object(carried, (virtual_stage + 1) % stages, SEARCH_TAG)
    found = comm.bcast_object(carried[1] if pipe.stage_index == last_owner else None, root=last_owner)
    return found or "no layer on a second pass (the values depend on random draws such as dropout)"


def _search_chunk(pipe: Any, chunk_index: int, activation: Array | None,
                  found: str | None) -> tuple[Array | None, str | None]:
    if found is not None:
        return None, found
    start = pipe.chunk_ranges[chunk_index][0]
    for offset, layer in enumerate(pipe.chunks[chunk_index]):
        activation, _ = layer.forward(activation)
        if not pipe.all_tensor_ranks(is_finite(activation)):
            return None, f"layer {start + offset} ({layer!r}) on {pipe.position}"
    return activation, None
