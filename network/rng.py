"""Seeded random generators, one per array module, for initialisation and dropout."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy

_seed: int | None = None
_generators: dict[str, Any] = {}


def manual_seed(seed: int) -> None:
    """Seed every generator the library uses (initialisation, dropout), on CPU and GPU."""
    if not isinstance(seed, (int, numpy.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    global _seed
    _seed = int(seed)
    _generators.clear()


def generator(xp: ModuleType = numpy):
    """The shared generator for array module `xp` (numpy.random.Generator or cupy's)."""
    name = xp.__name__
    if name not in _generators:
        _generators[name] = xp.random.default_rng(_seed)
    return _generators[name]


def get_rng_state() -> dict:
    """The numpy generator's state, to store in a checkpoint."""
    return {"seed": _seed, "numpy": generator(numpy).bit_generator.state}


def set_rng_state(state: dict) -> None:
    """Restore a state returned by `get_rng_state`."""
    global _seed
    _seed = state["seed"]
    _generators.clear()
    generator(numpy).bit_generator.state = state["numpy"]


class seeded:
    """Context manager: inside, every shared generator restarts from `seed`; outside, the old ones return.

    Lets code that draws random numbers (dropout) repeat the same draws, as a gradient check needs.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self) -> None:
        global _seed, _generators
        self._saved = (_seed, _generators)
        _seed, _generators = self.seed, {}

    def __exit__(self, *exc_info) -> None:
        global _seed, _generators
        _seed, _generators = self._saved
