"""Average scalar metrics (loss, accuracy, ...) over the ranks of a job."""
from __future__ import annotations

import math
from typing import Mapping

import numpy

from mpiprop.distributed.transport.communicator import Communicator, MpiComm, mpi_comm_of
from mpiprop.distributed.reliability.waits import waiting_in


def average_metrics(metrics: Mapping[str, float], comm: "MpiComm | Communicator | None" = None,
                    weights: float | None = None) -> dict[str, float]:
    """The mean of each metric over all ranks, identical on every rank.

    Collective: every rank of `comm` (default MPI.COMM_WORLD) must call it with the same keys.
    The mean is the weighted sum divided by the sum of weights, in float64, so an accuracy
    averaged with `weights=number_of_samples` equals the accuracy over the union of all ranks'
    samples. The values are gathered and summed in rank order on every rank, so every rank gets
    bitwise the same result and decisions taken on it (early stopping) agree.

    Args:
        metrics: name -> float on this rank.
        comm: the communicator to average over.
        weights: this rank's weight (e.g. its number of samples); None weighs ranks equally.

    Returns:
        name -> averaged float, with the keys in this rank's order.

    Raises:
        ValueError: on every rank, when the ranks pass different metric names; for a negative or
            non-finite weight, or when all weights are zero.
    """
    mpi_comm = mpi_comm_of(comm)
    names = sorted(metrics)
    weight = 1.0 if weights is None else float(weights)
    with waiting_in("allgather of metric names"):
        _check_agreement(mpi_comm.allgather((names, weight)))
    mine = numpy.array([weight * float(metrics[name]) for name in names] + [weight], dtype=numpy.float64)
    every_rank = numpy.empty((mpi_comm.Get_size(), mine.size), dtype=numpy.float64)
    with waiting_in("allgather of metric values"):
        mpi_comm.Allgather(mine, every_rank)
    totals = every_rank.sum(axis=0)  # summed in rank order on every rank: bitwise-identical results
    means = {name: float(total / totals[-1]) for name, total in zip(names, totals[:-1])}
    return {name: means[name] for name in metrics}


def _check_agreement(every_rank: list[tuple[list[str], float]]) -> None:
    """Every rank sees every rank's names and weight, so all of them raise together or none does."""
    reference = every_rank[0][0]
    for other_rank, (names, weight) in enumerate(every_rank):
        if names != reference:
            raise ValueError(f"average_metrics needs the same metric names on every rank, but rank 0 passed "
                             f"{reference} and rank {other_rank} passed {names}")
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"average_metrics weights must be finite numbers >= 0, but rank {other_rank} "
                             f"passed {weight}")
    if sum(weight for _, weight in every_rank) == 0:
        raise ValueError("average_metrics got weight 0 on every rank; pass weights > 0 on at least one rank")
