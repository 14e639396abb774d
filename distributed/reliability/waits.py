"""Where the main thread waits: each blocking wait of the library runs inside `waiting_in`, and so may the user's."""
from __future__ import annotations

import time

_waiting: tuple[str, float] | None = None  # (operation, monotonic start) of the wait in progress


class waiting_in:
    """Context manager marking that the main thread waits in `operation` (e.g. "allreduce of 4096 float32").

    The stall watchdog and the check for ranks that left the job watch these waits; wrap your
    own mpi4py calls in it (`with mpiprop.distributed.waiting_in("allreduce of my counters"):`)
    to have them watched too.
    """

    __slots__ = ("operation", "outer")

    def __init__(self, operation: str):
        self.operation = operation

    def __enter__(self) -> None:
        global _waiting
        self.outer = _waiting
        _waiting = (self.operation, time.monotonic())

    def __exit__(self, *exc_info) -> None:
        global _waiting
        _waiting = self.outer


def current_wait() -> tuple[str, float] | None:
    """(operation, seconds waited so far) of the wait in progress, or None."""
    waiting = _waiting
    return None if waiting is None else (waiting[0], time.monotonic() - waiting[1])
