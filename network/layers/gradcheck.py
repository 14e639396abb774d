"""Gradient check: compare a layer's backward with float64 central finite differences."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy

from mpiprop.network.compute import rng
from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.layers.layer import Layer


class GradcheckError(AssertionError):
    """Raised when analytic and numerical gradients disagree."""


@dataclass
class GradcheckResult:
    """Largest absolute difference between analytic and numerical gradients, per checked array."""

    max_abs_error: dict[str, float] = field(default_factory=dict)

    @property
    def worst(self) -> float:
        return max(self.max_abs_error.values(), default=0.0)


def gradcheck(layer: Layer, x: Array, *, eps: float = 1e-6, atol: float = 1e-6, rtol: float = 1e-4,
              check_input: bool = True, max_elements: int | None = None, seed: int = 0) -> GradcheckResult:
    """Check `layer.backward` (input and parameter gradients) against central differences.

    Runs on a float64 copy of the layer and input, so the layer itself is untouched.
    The checked scalar is sum(forward(x) * dy) for a fixed random dy. Random layers
    (dropout) draw the same numbers on every forward.

    Args:
        layer: the layer or model to check.
        x: an input batch (integer inputs, such as an Embedding's ids, are passed as they are).
        eps: finite-difference step.
        atol, rtol: an element passes when |analytic - numeric| <= atol + rtol * |numeric|.
        check_input: also check the gradient with respect to `x` (floating inputs only).
        max_elements: check at most this many randomly chosen elements per array.
        seed: for dy, the element choice and the layer's random draws.

    Returns:
        GradcheckResult with the largest error per array ("input", "0.weight", ...).

    Raises:
        GradcheckError: naming each array whose gradient disagrees and by how much.
    """
    layer = copy.deepcopy(layer).to(dtype=numpy.float64)
    if x.dtype.kind == "f":
        x = x.astype(numpy.float64)
    else:
        check_input = False  # integer inputs (token ids) have no gradient
    xp = get_array_module(x)
    chooser = numpy.random.default_rng(seed)
    own_generators = _own_generator_states(layer)

    def forward(inputs):
        for generator, state in own_generators:
            generator.bit_generator.state = state
        with rng.seeded(seed):
            return layer.forward(inputs)

    y, cache = forward(x)
    dy = xp.asarray(chooser.standard_normal(y.shape))
    layer.zero_grad()
    dx = layer.backward(dy, cache)

    def objective() -> float:
        return float((forward(x)[0] * dy).sum())

    checks = [(name, p.data, p.grad) for name, p in layer.named_parameters()]
    if check_input:
        checks.insert(0, ("input", x, dx))
    result, failures = GradcheckResult(), []
    for name, array, analytic in checks:
        error, detail = _compare(array, analytic, objective, eps, atol, rtol, max_elements, chooser)
        result.max_abs_error[name] = error
        if detail:
            failures.append(f"{name}: {detail}")
    if failures:
        raise GradcheckError(f"gradient check of {type(layer).__name__} failed:\n  " + "\n  ".join(failures))
    return result


def _own_generator_states(layer: Layer) -> list[tuple[numpy.random.Generator, dict]]:
    """(generator, state) for every numpy Generator a layer or sub-layer holds (e.g. `Dropout(generator=...)`)."""
    found = [(value, value.bit_generator.state) for value in vars(layer).values()
             if isinstance(value, numpy.random.Generator)]
    for _, child in layer.children():
        found.extend(_own_generator_states(child))
    return found


def _compare(array, analytic, objective, eps, atol, rtol, max_elements, chooser) -> tuple[float, str]:
    """Perturb elements of `array` in place and compare; returns (max error, failure text or "")."""
    flat_indices = numpy.arange(array.size)
    if max_elements is not None and array.size > max_elements:
        flat_indices = chooser.choice(array.size, size=max_elements, replace=False)
    worst, detail = 0.0, ""
    for flat in flat_indices:
        index = numpy.unravel_index(int(flat), array.shape)
        original = float(array[index])
        array[index] = original + eps
        plus = objective()
        array[index] = original - eps
        minus = objective()
        array[index] = original
        numeric = (plus - minus) / (2 * eps)
        exact = float(analytic[index])
        error = abs(exact - numeric)
        if error > worst:
            worst = error
        if error > atol + rtol * abs(numeric) and not detail:
            detail = f"at index {tuple(int(i) for i in index)} analytic {exact:.8g} vs numeric {numeric:.8g}"
    return worst, detail
