"""A pipeline's batch across its ranks: the plan every rank agrees on, the micro-batches' loss weights, the results."""
from __future__ import annotations

import time

import numpy

from mpiprop.distributed.pipeline.batch_header import batch_rows, describe_batch, plan_batch
from mpiprop.distributed.pipeline.micro_batches import BatchPlan, loss_shares, micro_batch_slices
from mpiprop.distributed.pipeline.stage import RunResult
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.polite_wait import wait_politely
from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.layers.losses import Loss


def agree_on_batch(pipeline_comm: Communicator, x: Array | None, y: Array | None, is_first: bool, is_last: bool,
                   micro_batches: int, needs_targets: bool, forward_only_run: bool = False) -> BatchPlan:
    """All ranks learn the batch's size and input signature from the first rank, and check the targets; collective.

    A forward-only run cuts a batch of fewer rows than `micro_batches` into one-row micro-batches
    (the last, smaller batch of an evaluation loader); training needs every micro-batch.

    Raises:
        ValueError: on every rank, when x or y is missing or their sizes do not fit.
    """
    header = describe_batch(x, y, is_first, is_last, needs_targets)
    wait_politely([pipeline_comm.iallreduce(header, "max")])
    if forward_only_run:
        micro_batches = max(1, min(micro_batches, batch_rows(header)))
    return plan_batch(header, micro_batches, needs_targets)


def loss_weights(plan: BatchPlan, y: Array, loss_fn: Loss, data_comm: Communicator | None) -> list[float]:
    """Each micro-batch's weight in the batch's loss: its share of the loss's denominator (rows, elements,
    the class weight of the kept targets), summed over the replicas' shares in `data_comm` (none: this
    rank's alone); 1 for a sum. Collective over `data_comm`."""
    if loss_fn.reduction == "sum":
        return [1.0] * len(plan.sizes)
    denominators = [loss_fn.denominator(y[rows]) for rows in micro_batch_slices(list(plan.sizes))]
    total = numpy.array([sum(denominators)], dtype=numpy.float64)
    if data_comm is not None:
        wait_politely([data_comm.iallreduce(total, "sum")])
    return loss_shares(denominators, float(total[0]))


def summed_over(comm: Communicator, loss: float) -> float:
    """The ranks' shares of the loss, summed: over the replicas, the loss over every replica's share of the batch."""
    summed = numpy.array([loss], dtype=numpy.float64)
    wait_politely([comm.iallreduce(summed, "sum")])
    return float(summed[0])


def shared_loss(pipeline_comm: Communicator, result: RunResult) -> float:
    """Share the last stage's loss with every rank; the run's span (in `result.stats`) ends here on all of them."""
    started = time.perf_counter()
    loss = numpy.array([result.loss if result.loss is not None else 0.0])
    wait_politely([pipeline_comm.iallreduce(loss, "sum")])
    result.stats.total += time.perf_counter() - started
    return float(loss[0])


def joined(outputs: list[Array] | None) -> Array | None:
    """The micro-batches' outputs as one batch, or None."""
    if outputs is None:
        return None
    return get_array_module(outputs[0]).concatenate(outputs, axis=0)
