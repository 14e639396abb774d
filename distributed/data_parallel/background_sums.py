"""BackgroundSums: a thread that sums gradient buckets while the main thread goes on with backward."""
from __future__ import annotations

import queue
import threading
import weakref
from typing import Callable

import threadpoolctl
from mpi4py import MPI

from mpiprop.distributed.reliability.waits import waiting_in
from mpiprop.distributed.transport.world import NodePlacement


def spare_core_per_rank(node: NodePlacement, blas_threads: int) -> bool:
    """Whether every rank of the node can have one core beyond its BLAS threads, and this rank may use
    more than one core: only then does a second thread per rank run beside the math instead of taking
    turns with it."""
    return node.rank_cores > 1 and node.node_cores >= node.local_size * (blas_threads + 1)


def blas_threads_in_use() -> int:
    """The most threads any loaded BLAS library will use (1 where none is loaded)."""
    counts = [library["num_threads"] for library in threadpoolctl.threadpool_info() if library["user_api"] == "blas"]
    return max(counts, default=1)


def background_sums_possible(node: NodePlacement) -> bool:
    """A spare core for every rank of the node, and an MPI that lets a second thread call it."""
    return MPI.Query_thread() == MPI.THREAD_MULTIPLE and spare_core_per_rank(node, blas_threads_in_use())


class BackgroundSums:
    """Runs `work(index)` on one thread for each submitted index, in the order submitted.

    numpy and MPI release the interpreter while they work, so the sums run beside the main
    thread's matrix products on a core of their own. `wait()` returns once every submitted
    index is done, and raises there the first error `work` raised (later indices are then
    skipped). The thread holds `work`'s object weakly and ends once that object is collected.

    Args:
        work: a bound method to call with each index (e.g. wait until every rank announced
            bucket `index`, then sum this rank's slice of it).
        name: the thread's name.
    """

    def __init__(self, work: Callable[[int], None], name: str):
        self._indices: queue.Queue[int | None] = queue.Queue()
        self._errors: list[BaseException] = []
        threading.Thread(target=_serve, args=(weakref.WeakMethod(work), self._indices, self._errors),
                         name=name, daemon=True).start()
        weakref.finalize(work.__self__, self._indices.put, None)

    def submit(self, index: int) -> None:
        self._indices.put(index)

    def wait(self, what: str) -> None:
        """Block until every submitted index is done (watched as a wait in `what`), then raise any error."""
        with waiting_in(what):
            self._indices.join()
        if self._errors:
            error = self._errors[0]
            self._errors.clear()
            raise error


def _serve(work: weakref.WeakMethod, indices: queue.Queue, errors: list[BaseException]) -> None:
    """The thread: call `work` with each index until None comes (its object was collected)."""
    while True:
        index = indices.get()
        try:
            if index is None:
                return
            if not errors:
                _call(work, index)
        except BaseException as error:  # handed to the main thread by wait()
            errors.append(error)
        finally:
            indices.task_done()


def _call(work: weakref.WeakMethod, index: int) -> None:
    """`work(index)` if its object is still alive; the strong reference ends with this call."""
    method = work()
    if method is not None:
        method(index)
