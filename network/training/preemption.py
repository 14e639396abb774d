"""Preemption: on SIGTERM or SIGUSR1, training finishes its step on every rank, checkpoints and exits with status 75."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any

import numpy

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: the work is saved, start it again to go on


class Preempted(SystemExit):
    """Training stopped on a preemption signal after writing its checkpoint; uncaught, it exits with status 75."""

    def __init__(self, message: str):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PreemptionWatch:
    """Within a `with` block, SIGTERM and SIGUSR1 are noted instead of ending the process.

    A signal whose handler the program has set itself (one that calls `Trainer.request_stop`,
    say) is left to that handler; only the default, or a handler marked `ends_the_process`
    (one that ends the process as the default would, after a line), is replaced.

    Schedulers (Slurm, Kubernetes) send SIGTERM and wait before they kill; `mpiexec`
    forwards it to every rank. The Trainer asks `agreed()` after each step: every rank
    answers the same, so all of them stop after the same step and write one checkpoint.

    Args:
        enabled: when False the block changes nothing (and `agreed()` is always False).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._in_flight: tuple[Any, numpy.ndarray] | None = None

    def __enter__(self) -> "PreemptionWatch":
        if self.enabled:
            self._previous = {each: signal.signal(each, self._note) for each in PREEMPTION_SIGNALS
                              if _ends_the_process(signal.getsignal(each))}
        return self

    def __exit__(self, exc_type: Any, *exc_info: Any) -> None:
        for each, handler in self._previous.items():
            signal.signal(each, handler)
        self._previous = {}
        if exc_type is None and self._in_flight is not None:  # after an error it stays referenced, unread
            self._in_flight[0].wait()
            self._in_flight = None

    def _note(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    def agreed(self, comm: Any = None) -> bool:
        """True, on every rank alike, when any rank had got a preemption signal by the previous call.

        With several ranks, each call starts one non-blocking allreduce of one integer (this
        rank's signal number, 0 for none; the largest wins) and reads the one the previous call
        started, long done by then: no call waits for the other ranks, and all of them stop one
        step after the step in which the signal came. Leaving the `with` block without an error
        finishes the last reduction.

        Args:
            comm: with several ranks, a communicator whose `iallreduce(array, "max")` reduces a numpy
                array in place and returns a request with `wait()` (all ranks call this together).
        """
        if not self.enabled:
            return False
        if comm is None:
            return self.signal_name is not None
        earlier, self._in_flight = self._in_flight, self._start_reduction(comm)
        if earlier is None or not self._read(*earlier):
            return False
        self._in_flight[0].wait()  # every rank stops here: leave no reduction behind
        self._in_flight = None
        return True

    def _start_reduction(self, comm: Any) -> tuple[Any, numpy.ndarray]:
        noted = numpy.array([0 if self.signal_name is None else signal.Signals[self.signal_name].value],
                            dtype=numpy.int64)
        return comm.iallreduce(noted, "max"), noted

    def _read(self, request: Any, largest: numpy.ndarray) -> bool:
        request.wait()
        if largest[0] and self.signal_name is None:
            self.signal_name = signal.Signals(int(largest[0])).name
        return bool(largest[0])

    def stop(self, rank: int, where: str, checkpoint: str) -> Preempted:
        """The exception that ends training; rank 0 also says why on stderr."""
        message = (f"rank {rank}: preempted by {self.signal_name}: stopped after {where} and wrote checkpoint "
                   f"{checkpoint}; resume from it to go on (exit status {PREEMPTED_EXIT_CODE})")
        if rank == 0:
            try:
                sys.stderr.write(message + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):  # no one reads stderr any more: the checkpoint is what matters
                pass
        return Preempted(message)


def _ends_the_process(handler: Any) -> bool:
    """Whether `handler` ends the process as the default does (so preemption may replace it)."""
    return handler is signal.SIG_DFL or getattr(handler, "ends_the_process", False)
