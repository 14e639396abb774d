"""Where the main thread waits: each blocking wait of the library runs inside `waiting_in`, and so may the user's."""
from __future__ import annotations

import time
from typing import Collection

_waiting: tuple[str, float, frozenset[int] | None] | None = None  # (operation, monotonic start, world ranks)


class waiting_in:
    """Context manager marking that the main thread waits in `operation` (e.g. "allreduce of 4096 float32").

    The stall watchdog and the check for ranks that left the job watch these waits; wrap your
    own mpi4py calls in it (`with mpiprop.distributed.waiting_in("allreduce of my counters"):`)
    to have them watched too.

    Args:
        operation: what the main thread waits in, in words.
        ranks: the ranks of COMM_WORLD taking part (those of the communicator waited on); None when
            unknown, as if every rank took part.
    """

    __slots__ = ("operation", "ranks", "outer")

    def __init__(self, operation: str, ranks: Collection[int] | None = None):
        self.operation = operation
        self.ranks = None if ranks is None else frozenset(ranks)

    def __enter__(self) -> None:
        global _waiting
        self.outer = _waiting
        _waiting = (self.operation, time.monotonic(), self.ranks)

    def __exit__(self, *exc_info) -> None:
        global _waiting
        _waiting = self.outer


def current_wait() -> tuple[str, float] | None:
    """(operation, seconds waited so far) of the wait in progress, or None."""
    waiting = _waiting
    return None if waiting is None else (waiting[0], time.monotonic() - waiting[1])


def current_wait_among() -> tuple[str, float, frozenset[int] | None] | None:
    """(operation, seconds waited so far, COMM_WORLD ranks taking part or None) of the wait in progress, or None."""
    waiting = _waiting
    return None if waiting is None else (waiting[0], time.monotonic() - waiting[1], waiting[2])


def ranks_of_all(parts: Collection[frozenset[int] | None]) -> frozenset[int] | None:
    """The ranks taking part in any of several waits: their union, or None when any of them is unknown."""
    if any(ranks is None for ranks in parts):
        return None
    return frozenset().union(*parts)
