"""Seeded random generators, one per array module, for initialisation, and one stream per dropout layer."""
from __future__ import annotations

from contextlib import contextmanager
from types import ModuleType
from typing import Any, Iterator

import numpy

_seed: int | None = None
_generators: dict[Any, Any] = {}
_restored: dict[int, dict] = {}
_streams_made = 0
_row_window: tuple[int, int] | None = None


class Stream:
    """A random stream of one layer: its number among the streams made since `manual_seed` names its numbers
    (and its state in a checkpoint); its generators are its own, so two models built after the same seed
    draw the same numbers without sharing one generator.

    Args:
        number: the stream's number.
    """

    def __init__(self, number: int):
        self.number = number

    def __repr__(self) -> str:
        return f"Stream({self.number})"


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
    _restored.clear()


def generator(xp: ModuleType = numpy):
    """The shared generator for array module `xp` (numpy.random.Generator or cupy's)."""
    name = xp.__name__
    if name not in _generators:
        _generators[name] = xp.random.default_rng(_seed)
    return _generators[name]


def new_stream() -> Stream:
    """A new random stream, numbered 0, 1, 2, ... in the order they are asked for since `manual_seed`.

    A layer that draws random numbers in training (Dropout) takes one when it is made, so each
    such layer draws from a stream of its own: the same numbers whether the model runs in one
    process or is cut into pipeline stages on several, and a model built alike elsewhere (or
    in this process, after the same seed) draws them too, from generators of its own.
    """
    global _streams_made
    _streams_made += 1
    return Stream(_streams_made - 1)


def stream_generator(stream: "Stream | int", xp: ModuleType = numpy):
    """The generator of random stream `stream` for array module `xp`, seeded from the seed and the stream number.

    Its draws follow one another: drawing 3 rows then 5 gives the 8 rows one draw of 8 would
    (on numpy), so micro-batches get the rows of their batch's numbers. A `Stream` has generators of
    its own; a bare number names generators shared by every user of that number.
    """
    key = ("stream", xp.__name__, stream)
    if key not in _generators:
        number = stream.number if isinstance(stream, Stream) else int(stream)
        entropy = numpy.random.SeedSequence(_seed, spawn_key=(number,)).generate_state(1, numpy.uint64)[0]
        _generators[key] = xp.random.default_rng(int(entropy))
        if xp is numpy and number in _restored:
            _generators[key].bit_generator.state = _restored[number]
    return _generators[key]


@contextmanager
def row_window(offset: int, total: int) -> Iterator[None]:
    """Inside, a layer drawing one number per row (Dropout) draws for a batch of `total` rows and keeps the rows
    from `offset` on: a data-parallel rank holding those rows of the global batch gets the numbers one process
    would give them, and every rank's stream moves on past the whole batch."""
    global _row_window
    saved, _row_window = _row_window, (int(offset), int(total))
    try:
        yield
    finally:
        _row_window = saved


@contextmanager
def rows_within(offset: int, total: int) -> Iterator[None]:
    """`row_window(offset, total)` for an input whose rows `offset`.. of `total` this process holds; inside an
    enclosing window, whose rows that input is, the offset counts from the window's own and its draw is kept."""
    if _row_window is None:
        with row_window(offset, total):
            yield
        return
    outer_offset, outer_total = _row_window
    with row_window(outer_offset + offset, outer_total):
        yield


def draw_rows(generator, shape: tuple[int, ...], dtype) -> Any:
    """`generator.random(shape)`, or, inside `row_window`, this process's rows of the window's whole draw."""
    if _row_window is None:
        return generator.random(shape, dtype=dtype)
    offset, total = _row_window
    if offset + shape[0] > total:
        raise ValueError(f"rows {offset} to {offset + shape[0]} lie outside the row window's {total} rows")
    return generator.random((total,) + tuple(shape[1:]), dtype=dtype)[offset:offset + shape[0]]


def get_rng_state() -> dict:
    """The numpy generators' states (shared and streams) and the stream count, to store in a checkpoint."""
    streams = {str(_stream_number(key[2])): generator.bit_generator.state
               for key, generator in _generators.items() if isinstance(key, tuple) and key[1] == "numpy"}
    streams = {**{str(number): state for number, state in _restored.items() if str(number) not in streams},
               **streams}
    return {"seed": _seed, "numpy": generator(numpy).bit_generator.state, "streams": streams,
            "streams_made": _streams_made}


def set_rng_state(state: dict) -> None:
    """Restore a state returned by `get_rng_state`."""
    global _seed, _streams_made
    _seed = state["seed"]
    _streams_made = state.get("streams_made", _streams_made)
    _generators.clear()
    _restored.clear()
    generator(numpy).bit_generator.state = state["numpy"]
    _restored.update({int(stream): stream_state for stream, stream_state in state.get("streams", {}).items()})


def _stream_number(stream: "Stream | int") -> int:
    return stream.number if isinstance(stream, Stream) else int(stream)


class seeded:
    """Context manager: inside, every shared generator and stream restarts from `seed`; outside, the old ones return.

    Lets code that draws random numbers (dropout) repeat the same draws, as a gradient check needs.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self) -> None:
        global _seed, _generators, _restored
        self._saved = (_seed, _generators, _restored)
        _seed, _generators, _restored = self.seed, {}, {}

    def __exit__(self, *exc_info) -> None:
        global _seed, _generators, _restored
        _seed, _generators, _restored = self._saved
