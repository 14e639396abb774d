"""Adam (Kingma & Ba, 2015) with L2 weight decay, and AdamW (Loshchilov & Hutter, 2019) with decoupled decay."""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy

from mpiprop.network.backend import elementwise_kernel, get_array_module
from mpiprop.network.checks import non_negative_float
from mpiprop.network.optim.optimizer import Optimizer
from mpiprop.network.parameter import Parameter


class Adam(Optimizer):
    """Adam with PyTorch's update rule (bias-corrected moments, eps added after the square root).

    With `weight_decay`, Adam adds weight_decay * p to the gradient (L2); AdamW instead
    shrinks the weights directly by lr * weight_decay * p.
    """

    hyperparameter_names = ("lr", "betas", "eps", "weight_decay")
    decoupled_weight_decay = False

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        beta1, beta2 = betas
        for name, beta in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{type(self).__name__} {name} must be in [0, 1), got {beta}")
        self.betas = (float(beta1), float(beta2))
        self.eps = non_negative_float(eps, f"{type(self).__name__} eps")
        self.weight_decay = non_negative_float(weight_decay, f"{type(self).__name__} weight_decay")

    def _update(self, p: Parameter, state: dict[str, Any]) -> None:
        xp = get_array_module(p.data)
        if xp is not numpy and "exp_avg" in state:
            self._fused_gpu_update(p, state)
            return
        beta1, beta2 = self.betas
        g = p.grad
        if self.weight_decay:
            if self.decoupled_weight_decay:
                p.data *= 1.0 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * p.data
        if "exp_avg" not in state:
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
            state["step"] = 0
        state["step"] += 1
        m, v, t = state["exp_avg"], state["exp_avg_sq"], state["step"]
        m *= beta1
        m += (1.0 - beta1) * g
        v *= beta2
        v += (1.0 - beta2) * (g * g)
        step_size = self.lr / (1.0 - beta1**t)
        denominator = xp.sqrt(v) * (1.0 / math.sqrt(1.0 - beta2**t))
        denominator += self.eps
        p.data -= step_size * (m / denominator)

    def _fused_gpu_update(self, p: Parameter, state: dict[str, Any]) -> None:
        """The update above in one GPU pass (cupy would otherwise run a kernel per operation)."""
        kernel = elementwise_kernel(
            "T g, T beta1, T beta2, T step_size, T bias2_correction, T eps, T l2, T decay", "T p, T m, T v",
            """T grad = g + l2 * p;
               p *= decay;
               m = beta1 * m + (1 - beta1) * grad;
               v = beta2 * v + (1 - beta2) * grad * grad;
               p -= step_size * m / (sqrt(v) * bias2_correction + eps);""",
            "mpiprop_adam")
        state["step"] += 1
        beta1, beta2 = self.betas
        t = state["step"]
        decoupled = self.decoupled_weight_decay
        scalar = p.data.dtype.type
        kernel(p.grad, scalar(beta1), scalar(beta2), scalar(self.lr / (1.0 - beta1**t)),
               scalar(1.0 / math.sqrt(1.0 - beta2**t)), scalar(self.eps),
               scalar(0.0 if decoupled else self.weight_decay),
               scalar(1.0 - self.lr * self.weight_decay if decoupled else 1.0),
               p.data, state["exp_avg"], state["exp_avg_sq"])


class AdamW(Adam):
    """Adam with decoupled weight decay (default 0.01, as PyTorch)."""

    decoupled_weight_decay = True

    def __init__(self, params: Iterable[Parameter], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)
