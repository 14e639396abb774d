"""Non-finite values (NaN, Inf) in training: cheap detection each step, and finding the layer they came from."""
from __future__ import annotations

import math
from typing import Any, Iterable

from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.layers.parameter import Parameter

POLICIES = ("raise", "skip")


class NonFiniteError(FloatingPointError):
    """A training step produced NaN or Inf; the message names the step, the rank and the layer."""


def is_finite(array: Array) -> bool:
    """Whether every element of `array` is finite (one reduction, one device sync on a GPU)."""
    return math.isfinite(float(get_array_module(array).sum(array)))


def grads_finite(params: Iterable[Parameter]) -> bool:
    """Whether every gradient is finite: NaN and Inf survive summation, so one sum per parameter and one sync."""
    total = None
    for p in params:
        partial = get_array_module(p.grad).sum(p.grad)
        total = partial if total is None else total + partial
    return total is None or math.isfinite(float(total))


def non_finite_grads(named_params: Iterable[tuple[str, Parameter]]) -> list[str]:
    """Names of the parameters whose gradient holds NaN or Inf."""
    return [name for name, p in named_params if not bool(get_array_module(p.grad).isfinite(p.grad).all())]


NOT_REPRODUCED = "no layer on a second pass (the values depend on random draws such as dropout)"


def first_non_finite_layer(model: Any, x: Array) -> str:
    """Where a forward pass of `x` first yields NaN or Inf: "the input batch", or "layer 3 (Linear(128, 10))".

    Runs `model`'s layers one at a time on `x` (a diagnosis after the fact; it draws new
    dropout masks). A model that is not a sequence of layers is named as a whole.
    """
    if not is_finite(x):
        return "the input batch"
    layers = getattr(model, "layers", None)
    if layers is None:
        return f"the model ({type(model).__name__})"
    for index, layer in enumerate(layers):
        x, _ = layer.forward(x)
        if not is_finite(x):
            return f"layer {index} ({layer!r})"
    return NOT_REPRODUCED
