"""SharedWindow: memory that the ranks of one node all read and write (an MPI-3 shared window)."""
from __future__ import annotations

from typing import Any, Callable

from mpiprop.distributed.transport.mpi_library import load_mpi, mpi_finalized


class SharedWindow:
    """`nbytes` bytes of this rank in a window shared by the ranks of a communicator on one node.

    Made by `Communicator.allocate_shared` (collective), kept open for loads and stores (one
    passive-target epoch), and released by `free()` or with its communicator. Arrays viewing
    `memory(rank)` must not be touched after that.
    """

    def __init__(self, nbytes: int, mpi_comm: Any):
        mpi = load_mpi()
        self.nbytes = int(nbytes)
        self._window = mpi.Win.Allocate_shared(self.nbytes, 1, comm=mpi_comm)
        self._window.Lock_all(mpi.MODE_NOCHECK)  # an open epoch, so Sync() may order loads and stores
        self._on_free: Callable[["SharedWindow"], None] | None = None  # set by the communicator that made it

    @property
    def freed(self) -> bool:
        """True once the window was released."""
        return self._window is None

    def memory(self, rank: int) -> Any:
        """Rank `rank`'s part of the window, as a buffer (view it with numpy.frombuffer)."""
        return self._live().Shared_query(rank)[0]

    def sync(self) -> None:
        """Order this rank's loads and stores of the window before what follows (around barriers)."""
        self._live().Sync()

    def free(self) -> None:
        """Release the window (collective over its ranks); calling it again does nothing."""
        window, self._window = self._window, None
        if window is None:
            return
        if self._on_free is not None:
            self._on_free(self)
        if not mpi_finalized():
            window.Unlock_all()
            window.Free()

    def _live(self) -> Any:
        if self._window is None:
            raise RuntimeError("this shared window was freed (its DataParallel, Pipeline or Communicator was "
                               "closed); build a new one")
        return self._window
