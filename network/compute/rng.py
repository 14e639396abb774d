"""Seeded random generators, one per array module, for initialisation, and one stream per dropout layer."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy

_seed: int | None = None
_generators: dict[str, Any] = {}
_streams_made = 0


def manual_seed(seed: int) -> None:
    """Seed every generator the library uses (initialisation, dropout), on CPU and GPU.

    Also restarts the numbering of random streams, so a model built after the same seed
    draws the same numbers, whichever process builds it.
    """
    if not isinstance(seed, (int, numpy.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    global _seed, _streams_made
    _seed = int(seed)
    _streams_made = 0
    _generators.clear()


def generator(xp: ModuleType = numpy):
    """The shared generator for array module `xp` (numpy.random.Generator or cupy's)."""
    name = xp.__name__
    if name not in _generators:
        _generators[name] = xp.random.default_rng(_seed)
    return _generators[name]


def new_stream() -> int:
    """The number of a new random stream: 0, 1, 2, ... in the order they are asked for since `manual_seed`.

    A layer that draws random numbers in training (Dropout) takes one when it is made, so each
    such layer draws from a stream of its own: the same numbers whether the model runs in one
    process or is cut into pipeline stages on several.
    """
    global _streams_made
    _streams_made += 1
    return _streams_made - 1


def stream_generator(stream: int, xp: ModuleType = numpy):
    """The generator of random stream `stream` for array module `xp`, seeded from the seed and the stream number.

    Its draws follow one another: drawing 3 rows then 5 gives the 8 rows one draw of 8 would
    (on numpy), so micro-batches get the rows of their batch's numbers.
    """
    name = f"{xp.__name__} stream {stream}"
    if name not in _generators:
        entropy = numpy.random.SeedSequence(_seed, spawn_key=(stream,)).generate_state(1, numpy.uint64)[0]
        _generators[name] = xp.random.default_rng(int(entropy))
    return _generators[name]


def get_rng_state() -> dict:
    """The numpy generators' states (shared and streams) and the stream count, to store in a checkpoint."""
    prefix = "numpy stream "
    streams = {name[len(prefix):]: generator.bit_generator.state
               for name, generator in _generators.items() if name.startswith(prefix)}
    return {"seed": _seed, "numpy": generator(numpy).bit_generator.state, "streams": streams,
            "streams_made": _streams_made}


def set_rng_state(state: dict) -> None:
    """Restore a state returned by `get_rng_state`."""
    global _seed, _streams_made
    _seed = state["seed"]
    _streams_made = state.get("streams_made", _streams_made)
    _generators.clear()
    generator(numpy).bit_generator.state = state["numpy"]
    for stream, stream_state in state.get("streams", {}).items():
        stream_generator(int(stream)).bit_generator.state = stream_state


class seeded:
    """Context manager: inside, every shared generator and stream restarts from `seed`; outside, the old ones return.

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
