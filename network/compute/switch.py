"""Switch: whether an optional fast path (MKL's gemm, numba's loops) is on, and a block that turns it off."""
from __future__ import annotations

import contextlib
from typing import Iterator


class Switch:
    """On until a `turned_off()` block, which turns it off for its duration (to compare with the plain path)."""

    def __init__(self) -> None:
        self.on = True

    @contextlib.contextmanager
    def turned_off(self) -> Iterator[None]:
        before, self.on = self.on, False
        try:
            yield
        finally:
            self.on = before
