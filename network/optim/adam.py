"""Adam (Kingma & Ba, 2015) with L2 weight decay, AdamW (Loshchilov & Hutter, 2019) with decoupled decay,
both with AMSGrad (Reddi et al., 2018) and maximize."""
from __future__ import annotations

import math
from typing import Any

import numpy

from mpiprop.network.backend import elementwise_kernel, get_array_module
from mpiprop.network.checks import non_negative_float
from mpiprop.network.compute import cpu_kernels
from mpiprop.network.compute.inplace import add_scaled_
from mpiprop.network.optim.optimizer import Optimizer, ParamsOrGroups
from mpiprop.network.layers.parameter import Parameter


class Adam(Optimizer):
    """Adam with PyTorch's update rule (bias-corrected moments, eps added after the square root).

    With `weight_decay`, Adam adds weight_decay * p to the gradient (L2); AdamW instead
    shrinks the weights directly by lr * weight_decay * p. With `amsgrad`, the second moment
    in the denominator is the largest seen so far (state "max_exp_avg_sq"); with `maximize`,
    the gradient's sign is flipped. Every hyperparameter may differ per parameter group.
    """

    hyperparameter_names = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize")
    decoupled_weight_decay = False

    def __init__(self, params: ParamsOrGroups, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def _checked(self, values: dict[str, Any], where: str) -> dict[str, Any]:
        values = super()._checked(values, where)
        beta1, beta2 = values["betas"]
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{where} {name} must be in [0, 1), got {beta}")
        values["betas"] = (float(beta1), float(beta2))
        values["eps"] = non_negative_float(values["eps"], f"{where} eps")
        values["weight_decay"] = non_negative_float(values["weight_decay"], f"{where} weight_decay")
        values["amsgrad"], values["maximize"] = bool(values["amsgrad"]), bool(values["maximize"])
        return values

    def _update(self, p: Parameter, state: dict[str, Any], group: dict[str, Any]) -> None:
        xp = get_array_module(p.data)
        if "exp_avg" in state and not group["amsgrad"] and self._fused_update(p, state, group):
            return
        beta1, beta2 = group["betas"]
        lr, weight_decay = group["lr"], group["weight_decay"]
        g = -p.grad if group["maximize"] else p.grad
        if weight_decay:
            if self.decoupled_weight_decay:
                p.data *= 1.0 - lr * weight_decay
            else:
                g = g + weight_decay * p.data
        if "exp_avg" not in state:
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
            state["step"] = 0
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m *= beta1
        add_scaled_(m, g, 1.0 - beta1)
        v *= beta2
        add_scaled_(v, g * g, 1.0 - beta2)
        if group["amsgrad"]:
            v = xp.maximum(state["max_exp_avg_sq"], v, out=state["max_exp_avg_sq"])
        step_size = lr / (1.0 - beta1**t)
        update = xp.sqrt(v)  # the one temporary beside g * g: sqrt, scale, eps and division in place
        update *= 1.0 / math.sqrt(1.0 - beta2**t)
        update += group["eps"]
        xp.divide(m, update, out=update)
        add_scaled_(p.data, update, -step_size)

    def _fused_update(self, p: Parameter, state: dict[str, Any], group: dict[str, Any]) -> bool:
        """The update above without amsgrad in one pass: a GPU kernel for cupy (which would otherwise run a
        kernel per operation), `cpu_kernels`' loop for numpy; False, changing nothing, when neither can run."""
        on_cpu = get_array_module(p.data) is numpy
        if on_cpu and not cpu_kernels.available():  # spares building the arguments on every step without numba
            return False
        beta1, beta2 = group["betas"]
        lr, weight_decay, t = group["lr"], group["weight_decay"], state["step"] + 1
        decoupled = self.decoupled_weight_decay
        scalar = p.data.dtype.type
        arguments = (p.grad, scalar(-1.0 if group["maximize"] else 1.0), scalar(beta1), scalar(beta2),
                     scalar(lr / (1.0 - beta1**t)), scalar(1.0 / math.sqrt(1.0 - beta2**t)), scalar(group["eps"]),
                     scalar(0.0 if decoupled else weight_decay), scalar(1.0 - lr * weight_decay if decoupled else 1.0),
                     p.data, state["exp_avg"], state["exp_avg_sq"])
        if on_cpu:
            if not cpu_kernels.adam_(*arguments):
                return False
        else:
            _gpu_adam_kernel()(*arguments)
        state["step"] = t
        return True


def _gpu_adam_kernel() -> Any:
    """The fused update as a cupy kernel: the arithmetic of `cpu_kernels`' Adam loop."""
    return elementwise_kernel(
        "T g, T sign, T beta1, T beta2, T step_size, T bias2_correction, T eps, T l2, T decay", "T p, T m, T v",
        """T grad = sign * g + l2 * p;
           p *= decay;
           m = beta1 * m + (1 - beta1) * grad;
           v = beta2 * v + (1 - beta2) * grad * grad;
           p -= step_size * m / (sqrt(v) * bias2_correction + eps);""",
        "mpiprop_adam")


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01, as PyTorch)."""

    decoupled_weight_decay = True

    def __init__(self, params: ParamsOrGroups, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, amsgrad: bool = False, *, maximize: bool = False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)
