"""A pipeline stage's replicas: they start from replica 0's values and average their gradients after each batch."""
from __future__ import annotations

from typing import Iterable

from mpiprop.distributed.data_parallel.gradient_sync import GradientSync
from mpiprop.distributed.pipeline.pipeline_batches import summed_over
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import Array
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.layers.sequential import Sequential


def replica_gradient_sync(chunks: list[Sequential], parameters: list[Parameter], buffers: list[Array],
                          data_comm: Communicator, bucket_cap_mb: float, shared_memory: bool) -> GradientSync:
    """Every replica starts from replica 0's values; gradients are then averaged by one GradientSync; collective.

    Args:
        chunks: the stage's chunks, whose parameters' gradients are final in reverse layer order.
        parameters, buffers: the stage's parameters (each once) and buffers.
        data_comm: the stage's replicas.
        bucket_cap_mb, shared_memory: of the gradient buckets, as for DataParallel.

    Returns:
        the GradientSync of the stage's parameters over its replicas.
    """
    for array in [p.data for p in parameters] + buffers:
        data_comm.bcast(array, root=0)
    final_order = {id(p): p for chunk in reversed(chunks)
                   for layer_params in reversed(chunk.parameters_final_after_each_layer()) for p in layer_params}
    return GradientSync(list(final_order.values()), data_comm, bucket_cap_mb=bucket_cap_mb,
                        shared_memory=shared_memory)


def broadcast_buffers(buffers: Iterable[Array], data_comm: Communicator) -> None:
    """Replica 0's buffers (BatchNorm running statistics) on every replica after each step, so every
    replica evaluates alike and the checkpoint's statistics are every replica's; collective."""
    for buffer in buffers:
        data_comm.bcast(buffer, root=0)


def finish_replica_step(sync: GradientSync, buffers: list[Array], data_comm: Communicator, loss: float) -> float:
    """End a training step over the replicas: their averaged gradients, replica 0's buffers and the loss summed
    over every replica's share of the batch; collective over `data_comm`.

    Returns:
        the batch's loss over every replica's share.
    """
    sync.finish()
    broadcast_buffers(buffers, data_comm)
    return summed_over(data_comm, loss)
