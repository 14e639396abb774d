"""Per-layer gradient norms, to spot vanishing and exploding gradients."""
from __future__ import annotations

import math

from mpiprop.network.layers.layer import Layer


def gradient_norms(model: Layer) -> dict[str, float]:
    """The L2 norm of each parameter's gradient, keyed by parameter name."""
    return {name: float(math.sqrt(float((p.grad * p.grad).sum()))) for name, p in model.named_parameters()}


def gradient_health(model: Layer, vanishing_below: float = 1e-7, exploding_above: float = 1e3) -> dict[str, list[str]]:
    """Names of parameters whose gradient norm looks vanishing, exploding or non-finite.

    Returns:
        {"vanishing": [...], "exploding": [...], "non_finite": [...]}.
    """
    report: dict[str, list[str]] = {"vanishing": [], "exploding": [], "non_finite": []}
    for name, norm in gradient_norms(model).items():
        if not math.isfinite(norm):
            report["non_finite"].append(name)
        elif norm < vanishing_below:
            report["vanishing"].append(name)
        elif norm > exploding_above:
            report["exploding"].append(name)
    return report
