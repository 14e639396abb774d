"""Gradient clipping by total norm or by value."""
from __future__ import annotations

import math
from typing import Iterable

from mpiprop.network.backend import get_array_module
from mpiprop.network.checks import non_negative_float
from mpiprop.network.parameter import Parameter


def total_grad_norm(params: Iterable[Parameter], norm_type: float = 2.0) -> float:
    """The norm of all gradients taken together as one vector (norm_type 2, 1 or inf)."""
    params = list(params)
    if not params:
        return 0.0
    if norm_type == math.inf:
        return max(float(get_array_module(p.grad).abs(p.grad).max()) for p in params)
    if norm_type <= 0:
        raise ValueError(f"norm_type must be positive or inf, got {norm_type}")
    total = sum(float((get_array_module(p.grad).abs(p.grad) ** norm_type).sum()) for p in params)
    return total ** (1.0 / norm_type)


def clip_grad_norm_(params: Iterable[Parameter], max_norm: float, norm_type: float = 2.0) -> float:
    """Scale all gradients so their total norm is at most `max_norm`; return the norm before clipping."""
    params = list(params)
    max_norm = non_negative_float(max_norm, "max_norm")
    norm = total_grad_norm(params, norm_type)
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
