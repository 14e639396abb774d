"""SGD with optional momentum, dampening, Nesterov momentum, weight decay (L2) and maximize."""
from __future__ import annotations

from typing import Any

import numpy

from mpiprop.network.backend import elementwise_kernel, get_array_module
from mpiprop.network.checks import non_negative_float
from mpiprop.network.compute.inplace import add_scaled_
from mpiprop.network.optim.optimizer import Optimizer, ParamsOrGroups
from mpiprop.network.layers.parameter import Parameter


class SGD(Optimizer):
    """Stochastic gradient descent with PyTorch's update rule.

    g = ±grad + weight_decay * p (minus with maximize);  buf = momentum * buf + (1 - dampening) * g
    (buf = g at first);  g = g + momentum * buf if nesterov else buf;  p -= lr * g.
    Every hyperparameter may differ per parameter group (see `Optimizer`).
    """

    hyperparameter_names = ("lr", "momentum", "dampening", "nesterov", "weight_decay", "maximize")

    def __init__(self, params: ParamsOrGroups, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0, *, maximize: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                      weight_decay=weight_decay, maximize=maximize))

    def _checked(self, values: dict[str, Any], where: str) -> dict[str, Any]:
        values = super()._checked(values, where)
        for name in ("momentum", "dampening", "weight_decay"):
            values[name] = non_negative_float(values[name], f"{where} {name}")
        values["nesterov"], values["maximize"] = bool(values["nesterov"]), bool(values["maximize"])
        if values["nesterov"] and (values["momentum"] == 0 or values["dampening"] != 0):
            raise ValueError(f"{where}: Nesterov momentum needs momentum > 0 and dampening = 0, got "
                             f"momentum={values['momentum']}, dampening={values['dampening']}")
        return values

    def _update(self, p: Parameter, state: dict[str, Any], group: dict[str, Any]) -> None:
        momentum, weight_decay = group["momentum"], group["weight_decay"]
        if momentum and "momentum_buffer" in state and get_array_module(p.data) is not numpy:
            self._fused_gpu_update(p, state["momentum_buffer"], group)
            return
        g = -p.grad if group["maximize"] else p.grad
        if weight_decay:
            g = g + weight_decay * p.data
        if momentum:
            if "momentum_buffer" not in state:
                buf = state["momentum_buffer"] = g.copy()
            else:
                buf = state["momentum_buffer"]
                buf *= momentum
                add_scaled_(buf, g, 1.0 - group["dampening"])
            g = g + momentum * buf if group["nesterov"] else buf
        add_scaled_(p.data, g, -group["lr"])

    def _fused_gpu_update(self, p: Parameter, buf: Any, group: dict[str, Any]) -> None:
        """The momentum update above in one GPU pass (cupy would otherwise run a kernel per operation)."""
        kernel = elementwise_kernel(
            "T g, T sign, T lr, T momentum, T dampening, T weight_decay, bool nesterov", "T p, T buf",
            """T d = sign * g + weight_decay * p;
               buf = momentum * buf + (1 - dampening) * d;
               p -= lr * (nesterov ? d + momentum * buf : buf);""",
            "mpiprop_sgd_momentum")
        scalar = p.data.dtype.type
        kernel(p.grad, scalar(-1.0 if group["maximize"] else 1.0), scalar(group["lr"]), scalar(group["momentum"]),
               scalar(group["dampening"]), scalar(group["weight_decay"]), group["nesterov"], p.data, buf)
