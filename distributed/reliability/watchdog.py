"""Stall watchdog: when this rank has waited in one communication for too long, say where and abort the job.

Every blocking wait of the library runs inside `waiting_in("allreduce of ...")`, which
records what the main thread waits for and since when (two assignments, no locking). A
`Watchdog` thread looks at that record; once one wait has lasted `timeout_s`, it prints
which rank waits in which operation, and the main thread's Python stack, and aborts every
rank. A rank that is stuck elsewhere (an endless loop, a dead filesystem) is found through
the ranks left waiting for it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
import traceback

from mpiprop.distributed.reliability.abort import abort_job

TIMEOUT_VARIABLE = "MPIPROP_STALL_TIMEOUT"
STALL_EXIT_CODE = 3

_waiting: tuple[str, float] | None = None  # (operation, monotonic start) of the wait in progress
_watchdog: "Watchdog | None" = None


class waiting_in:
    """Context manager marking that the main thread waits in `operation` (e.g. "allreduce of 4096 float32")."""

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


class Watchdog:
    """A daemon thread that aborts the job when one wait of this rank lasts `timeout_s` seconds.

    Args:
        timeout_s: the longest a single wait may last; choose it well above the slowest
            legitimate wait (a straggler's epoch of validation, a checkpoint write elsewhere).
        rank: this rank's number, for the report.
        check_every_s: how often the thread looks; by default a tenth of `timeout_s`, at most 1 s.
    """

    def __init__(self, timeout_s: float, rank: int, check_every_s: float | None = None):
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
            raise ValueError(f"stall timeout must be a positive number of seconds, got {timeout_s!r}")
        self.timeout_s, self.rank = float(timeout_s), rank
        self.check_every_s = min(self.timeout_s / 10, 1.0) if check_every_s is None else check_every_s
        self._stopped = threading.Event()
        self._main_thread = threading.main_thread()
        self._thread = threading.Thread(target=self._watch, name="mpiprop-stall-watchdog", daemon=True)

    def start(self) -> "Watchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(self.check_every_s):
            waiting = current_wait()
            if waiting is not None and waiting[1] >= self.timeout_s:
                abort_job(self.report(*waiting), exit_code=STALL_EXIT_CODE)

    def report(self, operation: str, waited_s: float) -> str:
        """The lines printed before aborting: the rank, the operation, the wait, the main thread's stack."""
        frame = sys._current_frames().get(self._main_thread.ident)
        stack = "".join(traceback.format_stack(frame)).splitlines() if frame is not None else []
        lines = [f"stall: rank {self.rank} has waited {waited_s:.1f} s (limit {self.timeout_s:g} s) in {operation}; "
                 "the rank it waits for has died, hangs, or took another code path. Aborting all ranks.",
                 "main thread stack (most recent call last):", *stack]
        return "".join(f"rank {self.rank}: {line}\n" for line in lines)


def start_watchdog(timeout_s: float, rank: int) -> Watchdog:
    """Start this process's watchdog (once; a second call with a running watchdog returns it unchanged)."""
    global _watchdog
    if _watchdog is None:
        _watchdog = Watchdog(timeout_s, rank).start()
    return _watchdog


def start_watchdog_from_environment(rank: int) -> Watchdog | None:
    """Start the watchdog when MPIPROP_STALL_TIMEOUT (seconds) is set, as `mpiprop run --stall-timeout` does."""
    value = os.environ.get(TIMEOUT_VARIABLE)
    if not value:
        return None
    try:
        timeout_s = float(value)
    except ValueError:
        raise ValueError(f"{TIMEOUT_VARIABLE}={value!r} is not a number of seconds; set it to e.g. 300") from None
    return start_watchdog(timeout_s, rank)
