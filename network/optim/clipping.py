"""Gradient clipping by total norm or by value."""
from __future__ import annotations

import math
from typing import Iterable

from mpiprop.network.backend import get_array_module
from mpiprop.network.checks import non_negative_float
from mpiprop.network.layers.parameter import Parameter


def total_grad_norm(params: Iterable[Parameter], norm_type: float = 2.0) -> float:
    """The norm of all gradients taken together as one vector (norm_type 2, 1 or inf).

    Parameters that other processes hold in part (a list with a `grad_norm(norm_type)` method, as
    DataParallel's under ZeRO-2) give the norm over every process's part, from that method.
    """
    across_processes = getattr(params, "grad_norm", None)
    if callable(across_processes):
        return across_processes(norm_type)
    params = list(params)
    if not params:
        return 0.0
    if norm_type == math.inf:
        return max(float(get_array_module(p.grad).abs(p.grad).max()) for p in params)
    if norm_type <= 0:
        raise ValueError(f"norm_type must be positive or inf, got {norm_type}")
    return grad_power_sum(params, norm_type) ** (1.0 / norm_type)


def grad_power_sum(params: Iterable[Parameter], norm_type: float = 2.0) -> float:
    """The sum over all gradient elements of |g| ** norm_type (its root is the total norm; partial sums add up)."""
    return sum(float((get_array_module(p.grad).abs(p.grad) ** norm_type).sum()) for p in params)


def clip_grad_norm_(params: Iterable[Parameter], max_norm: float, norm_type: float = 2.0,
                    total_norm: float | None = None) -> float:
    """Scale all gradients so their total norm is at most `max_norm`; return the norm before clipping.

    Args:
        params: the parameters whose gradients are scaled (with a `grad_norm` method, as DataParallel's
            under ZeRO-2, the norm is over every process's part of them: see `total_grad_norm`).
        max_norm: the largest total norm allowed.
        norm_type: 2, 1 or inf.
        total_norm: the norm when it is already known, e.g. over every stage of a pipelined
            model (whose other parameters live in other processes); None computes it from `params`.
    """
    max_norm = non_negative_float(max_norm, "max_norm")
    norm = total_grad_norm(params, norm_type) if total_norm is None else total_norm
    params = list(params)
    scale = max_norm / (norm + 1e-6)
    if scale < 1.0:
        for p in params:
            p.grad *= scale
    return norm


def clip_grad_value_(params: Iterable[Parameter], clip_value: float) -> None:
    """Clamp every gradient element into [-clip_value, clip_value], in place."""
    clip_value = non_negative_float(clip_value, "clip_value")
    for p in params:
        get_array_module(p.grad).clip(p.grad, -clip_value, clip_value, out=p.grad)
