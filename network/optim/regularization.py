"""L1 and L2 penalties: add their gradient to the parameters and return their value for the loss."""
from __future__ import annotations

from typing import Iterable

from mpiprop.network.backend import get_array_module
from mpiprop.network.checks import non_negative_float
from mpiprop.network.layers.parameter import Parameter


def l1_penalty(params: Iterable[Parameter], strength: float) -> float:
    """Add strength * sign(p) to each gradient; return strength * sum(|p|) to add to the loss.

    Call it after backward and before the optimizer step.
    """
    strength = non_negative_float(strength, "L1 strength")
    total = 0.0
    for p in params:
        xp = get_array_module(p.data)
        p.grad += strength * xp.sign(p.data)
        total += float(xp.abs(p.data).sum())
    return strength * total


def l2_penalty(params: Iterable[Parameter], strength: float) -> float:
    """Add strength * p to each gradient; return strength / 2 * sum(p²) to add to the loss.

    With plain SGD this equals `weight_decay=strength`.
    """
    strength = non_negative_float(strength, "L2 strength")
    total = 0.0
    for p in params:
        p.grad += strength * p.data
        total += float((p.data * p.data).sum())
    return 0.5 * strength * total


def weights_only(named_parameters: Iterable[tuple[str, Parameter]]) -> list[Parameter]:
    """The parameters that are not biases or normalisation shifts: the usual target of a penalty."""
    return [p for name, p in named_parameters if not name.endswith("bias") and p.data.ndim > 1]
