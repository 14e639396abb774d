"""SGD with optional momentum, dampening, Nesterov momentum and weight decay (L2)."""
from __future__ import annotations

from typing import Any, Iterable

import numpy

from mpiprop.network.backend import elementwise_kernel, get_array_module
from mpiprop.network.checks import non_negative_float
from mpiprop.network.inplace import add_scaled_
from mpiprop.network.optim.optimizer import Optimizer
from mpiprop.network.parameter import Parameter


class SGD(Optimizer):
    """Stochastic gradient descent with PyTorch's update rule.

    g = grad + weight_decay * p;  buf = momentum * buf + (1 - dampening) * g (buf = g at first);
    g = g + momentum * buf if nesterov else buf;  p -= lr * g.
    """

    hyperparameter_names = ("lr", "momentum", "dampening", "nesterov", "weight_decay")

    def __init__(self, params: Iterable[Parameter], lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.momentum = non_negative_float(momentum, "SGD momentum")
        self.dampening = non_negative_float(dampening, "SGD dampening")
        self.weight_decay = non_negative_float(weight_decay, "SGD weight_decay")
        self.nesterov = bool(nesterov)
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(f"Nesterov momentum needs momentum > 0 and dampening = 0, got momentum={momentum}, "
                             f"dampening={dampening}")

    def _update(self, p: Parameter, state: dict[str, Any]) -> None:
        if self.momentum and "momentum_buffer" in state and get_array_module(p.data) is not numpy:
            self._fused_gpu_update(p, state["momentum_buffer"])
            return
        g = p.grad
        if self.weight_decay:
            g = g + self.weight_decay * p.data
        if self.momentum:
            if "momentum_buffer" not in state:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf = state["momentum_buffer"]
                buf *= self.momentum
                add_scaled_(buf, g, 1.0 - self.dampening)
            g = g + self.momentum * buf if self.nesterov else buf
        add_scaled_(p.data, g, -self.lr)

    def _fused_gpu_update(self, p: Parameter, buf: Any) -> None:
        """The momentum update above in one GPU pass (cupy would otherwise run a kernel per operation)."""
        kernel = elementwise_kernel(
            "T g, T lr, T momentum, T dampening, T weight_decay, bool nesterov", "T p, T buf",
            """T d = g + weight_decay * p;
               buf = momentum * buf + (1 - dampening) * d;
               p -= lr * (nesterov ? d + momentum * buf : buf);""",
            "mpiprop_sgd_momentum")
        scalar = p.data.dtype.type
        kernel(p.grad, scalar(self.lr), scalar(self.momentum), scalar(self.dampening), scalar(self.weight_decay),
               self.nesterov, p.data, buf)
