"""Preemption: on SIGTERM or SIGUSR1, training finishes its step on every rank, checkpoints and exits with status 75."""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Callable

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
    forwards it to every rank. The Trainer asks `agreed()` after each step and `agreed_now()`
    after its last: every rank answers the same, so all of them stop at the same point and
    write one checkpoint. A signal noted after that last check, which no rank can agree on any
    more, is raised again when the block ends, with the handler it had before.

    Args:
        enabled: when False the block changes nothing (and `agreed()` is always False).
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}
        self._in_flight: Callable[[], int] | None = None
        self._acted_on = False

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
            self._in_flight()
            self._in_flight = None
        if exc_type is None and self.signal_name is not None and not self._acted_on:
            signal.raise_signal(signal.Signals[self.signal_name])  # came too late to agree on: never swallowed

    def _note(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    def agreed(self, ranks: Any = None) -> bool:
        """True, on every rank alike, when any rank had got a preemption signal by the previous call.

        With several ranks, each call starts one non-blocking maximum of one integer (this
        rank's signal number, 0 for none) and reads the one the previous call started, long
        done by then: no call waits for the other ranks, and all of them stop one step after
        the step in which the signal came. Leaving the `with` block without an error finishes
        the last reduction.

        Args:
            ranks: with several ranks, the layout's ranks (see network.training.ranks.Ranks), whose
                `max_later(value)` starts the maximum over them (all ranks call this together).
        """
        if not self.enabled:
            return False
        if ranks is None:
            return self._act(self.signal_name is not None)
        earlier, self._in_flight = self._in_flight, ranks.max_later(self._noted())
        if earlier is None or not self._read(earlier):
            return False
        self._in_flight()  # every rank stops here: leave no reduction behind
        self._in_flight = None
        return self._act(True)

    def agreed_now(self, ranks: Any = None) -> bool:
        """Like `agreed`, but waits: True on every rank alike when any rank has got a signal by now.

        The last check of a run, after its last step: a signal that came during the final
        validation, callbacks or checkpoint is agreed on here (all ranks call this together).
        """
        if not self.enabled:
            return False
        if ranks is None:
            return self._act(self.signal_name is not None)
        earlier, self._in_flight = self._in_flight, None
        seen = earlier is not None and self._read(earlier)
        return self._act(self._read(ranks.max_later(self._noted())) or seen)

    def _act(self, agreed: bool) -> bool:
        self._acted_on = self._acted_on or agreed
        return agreed

    def _noted(self) -> int:
        return 0 if self.signal_name is None else signal.Signals[self.signal_name].value

    def _read(self, result: Callable[[], int]) -> bool:
        largest = result()
        if largest and self.signal_name is None:
            self.signal_name = signal.Signals(largest).name
        return bool(largest)

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
