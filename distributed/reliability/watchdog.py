"""Stall watchdog: when this rank has waited in one communication for too long, say where and abort the job.

Every blocking wait of the library runs inside `waiting_in("allreduce of ...")`, which
records what the main thread waits for and since when (two assignments, no locking). A
`Watchdog` thread looks at that record; once one wait has lasted `timeout_s`, it prints
which rank waits in which operation, where every other rank is (so the rank that stopped
arriving is named: stuck in a loop, on a dead filesystem, on another code path), and the
main thread's Python stack, and aborts every rank.
"""
from __future__ import annotations

import os
import sys
import threading
import traceback

from mpiprop.distributed.reliability import peer_listener
from mpiprop.distributed.reliability.abort import abort_job
from mpiprop.distributed.reliability.waits import current_wait

TIMEOUT_VARIABLE = "MPIPROP_STALL_TIMEOUT"
STALL_EXIT_CODE = 3
PEER_ANSWERS_WITHIN_S = 2.0

_watchdog: "Watchdog | None" = None


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
                listener = peer_listener.running_listener()
                peers = None if listener is None else listener.ask_where_everyone_is(PEER_ANSWERS_WITHIN_S)
                abort_job(self.report(*waiting, peers=peers), exit_code=STALL_EXIT_CODE)

    def report(self, operation: str, waited_s: float, peers: dict[int, str] | None = None) -> str:
        """The lines printed before aborting: the rank, the operation, the wait, the other ranks, the main stack.

        Args:
            operation: what this rank waits in.
            waited_s: for how long.
            peers: the other ranks' answers (`peer_listener.where_this_rank_is`), by rank; None when unknown.
        """
        frame = sys._current_frames().get(self._main_thread.ident)
        stack = "".join(traceback.format_stack(frame)).splitlines() if frame is not None else []
        lines = [f"stall: rank {self.rank} has waited {waited_s:.1f} s (limit {self.timeout_s:g} s) in {operation}; "
                 + (_culprits(peers) if peers is not None else
                    "the rank it waits for has died, hangs, or took another code path.") + " Aborting all ranks.",
                 *_where_the_others_are(peers),
                 "main thread stack (most recent call last):", *stack]
        return "".join(f"rank {self.rank}: {line}\n" for line in lines)


def _culprits(peers: dict[int, str]) -> str:
    """The sentence naming the ranks that stopped arriving: not communicating, or not answering."""
    outside = sorted(rank for rank, answer in peers.items() if not answer.startswith("waits"))
    named = [f"rank {rank} {peers[rank]}" for rank in outside]
    if not named:
        return "every rank that answered waits too: they wait in different communications (another code path)."
    ranks = f"rank{'s' if len(outside) > 1 else ''} {', '.join(map(str, outside))}"
    return f"{ranks} stopped arriving: " + "; ".join(named) + "."


def _where_the_others_are(peers: dict[int, str] | None) -> list[str]:
    if peers is None:
        return []
    return [f"rank {rank} {answer}" for rank, answer in sorted(peers.items())]


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
