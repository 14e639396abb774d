"""Closing a strategy: its communicators and shared windows are released, its gradients kept in memory of their own."""
from __future__ import annotations

from typing import Any


class ReleasesCommunicator:
    """`close()` and `with` for a strategy that owns `self.comm` (a Communicator) and has `parameters()`.

    Everything made through `self.comm` (sub-communicators, shared windows, NCCL) is freed with it.
    Leaving a `with` block by an exception does not close it: the other ranks may not be leaving it.
    """

    def close(self) -> None:
        """Release this strategy's communicators and shared memory (collective: every rank closes it).

        The gradients are copied out of shared memory first, so the model stays usable on its own.
        Calling it again does nothing; any collective use afterwards raises RuntimeError.
        """
        if self.closed:
            return
        for p in self.parameters():
            p.grad = p.grad.copy()  # it may view a shared window that is about to go
        self.comm.free()

    @property
    def closed(self) -> bool:
        """True once `close()` ran."""
        return self.comm.closed

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:  # an exception may have left the other ranks elsewhere: closing then could hang
            self.close()
