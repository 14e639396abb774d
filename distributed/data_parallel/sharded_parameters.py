"""ShardedParameters: DataParallel's parameters under ZeRO-2, a list that knows the gradients' norm over every rank."""
from __future__ import annotations

import math
from typing import Iterable

import numpy

from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import get_array_module
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.optim.clipping import grad_power_sum


class ShardedParameters(list):
    """The parameters of a model whose gradients the ranks of `comm` hold in shares (each its own, the rest zero).

    A plain list of the parameters, for optimizers and loops, with `grad_norm`, which
    `nn.clip_grad_norm_` and `nn.total_grad_norm` ask for: the norm over every rank's share, so
    `clip_grad_norm_(dp.parameters(), max_norm)` clips by the global norm (collective: every rank
    calls it). A slice or copy of it is a plain list again and clips by this rank's share alone.

    Args:
        params: the parameters.
        comm: the ranks that hold the shares.
    """

    def __init__(self, params: Iterable[Parameter], comm: Communicator):
        super().__init__(params)
        self.comm = comm

    def grad_norm(self, norm_type: float = 2.0) -> float:
        """The norm of every rank's gradients taken together (norm_type 2, 1 or inf). Collective.

        Raises:
            ValueError: for a norm_type that is neither positive nor inf.
        """
        params = list(self)
        if norm_type == math.inf:
            local = max((float(get_array_module(p.grad).abs(p.grad).max()) for p in params), default=0.0)
            return float(self.comm.allreduce(numpy.array([local]), "max")[0])
        if norm_type <= 0:
            raise ValueError(f"norm_type must be positive or inf, got {norm_type}")
        summed = self.comm.allreduce(numpy.array([grad_power_sum(params, norm_type)]), "sum")
        return float(summed[0]) ** (1.0 / norm_type)
