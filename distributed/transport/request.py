"""Request: a non-blocking MPI operation in flight, finished by wait() or a successful test()."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

from mpiprop.distributed.reliability.waits import ranks_of_all, waiting_in
from mpiprop.distributed.transport.mpi_library import load_mpi


class Request:
    """A started non-blocking operation (Iallreduce, Isend, Irecv, ...).

    `wait()` blocks until it is done and then runs its completion step (for example the
    copy of a host-staged receive back into GPU memory), exactly once. The buffers MPI
    reads or writes are kept alive here until then. `what` names the operation for the
    stall watchdog's report ("receive of 4096 float32 from rank 2"); `ranks` are the COMM_WORLD
    ranks of its communicator (None: unknown), whose departure from the job ends a wait on it.
    """

    def __init__(self, mpi_request: Any, on_complete: Callable[[], None] | None = None,
                 keep_alive: Any = None, what: str = "an MPI operation", ranks: frozenset[int] | None = None):
        self._mpi_request = mpi_request
        self.what = what
        self.ranks = ranks
        self._on_complete = on_complete
        self._keep_alive = keep_alive
        self._done = False

    @property
    def done(self) -> bool:
        """True once the operation completed and its completion step ran."""
        return self._done

    def test(self) -> bool:
        """Drive MPI progress; finish and return True if the operation has completed."""
        if not self._done and self._mpi_request.Test():
            self._complete()
        return self._done

    def wait(self) -> None:
        """Block until the operation completes, then run its completion step."""
        if not self._done:
            with waiting_in(self.what, self.ranks):
                self._mpi_request.Wait()
            self._complete()

    def then(self, step: Callable[[], None], what: str | None = None) -> "Request":
        """Run `step` once the operation completes, after its own completion step; returns self. `what`, when
        given, renames the operation for the stall watchdog."""
        first = self._on_complete
        self._on_complete = step if first is None else lambda: (first(), step())
        self.what = self.what if what is None else what
        return self

    def _complete(self) -> None:
        self._done = True
        on_complete, self._on_complete, self._keep_alive = self._on_complete, None, None
        if on_complete is not None:
            on_complete()


def wait_all(requests: Iterable[Request]) -> None:
    """Wait for every request (one `MPI.Request.Waitall`), then run their completion steps in order."""
    pending = [request for request in requests if not request.done]
    with waiting_in(describe(pending), ranks_of_all([request.ranks for request in pending])):
        load_mpi().Request.Waitall([request._mpi_request for request in pending])
    for request in pending:
        request._complete()


def poll_all(requests: Iterable[Request]) -> bool:
    """Drive MPI progress on every request; True when all of them have completed."""
    return all([request.test() for request in requests])


def describe(requests: Sequence[Request]) -> str:
    """The operations `requests` stand for, in words, for the stall watchdog."""
    if len(requests) == 1:
        return requests[0].what
    return f"{len(requests)} operations (first: {requests[0].what})" if requests else "no operation"
