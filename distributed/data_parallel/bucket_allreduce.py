"""BucketAllreduce: what GradientSync drives, sums of flat buffers over ranks started one buffer at a time."""
from __future__ import annotations

from typing import Sequence

from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.transport.request import Request
from mpiprop.distributed.reliability.timeline import begin, end
from mpiprop.network.backend import Array


class BucketAllreduce:
    """Sums `buffers` over the ranks of `comm`, in place, each started once its values are final.

    Per backward: `start()`, then `launch(index)` for each buffer as it becomes final (a
    subclass records the request it starts in `_requests[index]`), `progress()` whenever
    there is a moment, and `finish()`, after which every buffer holds the sum over ranks.
    Before backward first writes a buffer, `make_whole(index)` (for buffers that are not
    always whole, see MpiBucketReduceScatter).
    `kind` names the algorithm ("mpi", "shared memory", "hierarchical").
    """

    kind = ""

    def __init__(self, buffers: Sequence[Array], comm: Communicator):
        self.buffers = list(buffers)
        self.comm = comm
        self._requests: list[Request | None] = []
        self._trace_tokens: list = []

    def start(self) -> None:
        """Forget the previous backward's requests."""
        self._requests = [None] * len(self.buffers)
        self._trace_tokens = [None] * len(self.buffers)

    def launched(self, index: int) -> bool:
        return self._requests[index] is not None

    def make_whole(self, index: int) -> None:
        """Backward is about to write buffer `index`: nothing to do where every buffer always exists whole."""

    def launch(self, index: int) -> None:
        """Start summing buffer `index`; its values must be final."""
        raise NotImplementedError

    def progress(self) -> None:
        """Advance what was launched, without waiting."""
        raise NotImplementedError

    def finish(self) -> int:
        """Launch nothing more, wait until every buffer holds its sum; returns the bytes handed over."""
        raise NotImplementedError

    def _trace(self, index: int, nbytes: int) -> None:
        """Open buffer `index`'s span in the timeline (closed by `_end_traces`)."""
        self._trace_tokens[index] = begin("allreduce", track=f"bucket {index}", bucket=index, bytes=nbytes)

    def _end_traces(self) -> None:
        for token in self._trace_tokens:
            end(token)
