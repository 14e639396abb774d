"""What rank 0 shows while training: a tqdm bar on a terminal, plain flushed lines when stderr is a pipe."""
from __future__ import annotations

import importlib.util
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

from mpiprop.network.checks import non_negative_float

Item = TypeVar("Item")
Wrap = Callable[[Iterable[Item], int, str], Iterator[Item]]
BAR, LINES = "bar", "lines"
DEFAULT_LINE_EVERY_S = 30.0


def progress_mode(requested: bool | None, main: bool, quiet: bool) -> str | None:
    """How to show progress: "bar", "lines" or None (nothing).

    Never off the main rank (`main` False) or when quiet. `requested` True asks for the bar, False for nothing; None
    chooses the bar when stderr is a terminal and tqdm is installed, else plain lines (stderr
    forwarded through a pipe, as under mpiexec, cannot draw a bar).
    """
    if not main or quiet or requested is False:
        return None
    if requested or (sys.stderr.isatty() and _tqdm_installed()):
        return BAR
    return LINES


def progress_display(mode: str | None, line_every_s: float = DEFAULT_LINE_EVERY_S) -> Wrap:
    """The function that wraps an epoch's batches for `mode`: `wrap(batches, total, description)`.

    Args:
        mode: "bar", "lines" or None, as `progress_mode` returns.
        line_every_s: in "lines" mode, the least seconds between two lines (0: a line after every batch).

    Raises:
        ValueError: for an unknown mode or a negative interval.
        TypeError: for an interval that is not a number.
    """
    line_every_s = non_negative_float(line_every_s, "progress_every (seconds between progress lines)")
    if mode is None:
        return lambda batches, total, description: iter(batches)
    if mode == BAR:
        return tqdm_bar
    if mode == LINES:
        return ProgressLines(line_every_s).wrap
    raise ValueError(f"progress mode must be {BAR!r}, {LINES!r} or None, got {mode!r}")


def tqdm_bar(batches: Iterable[Item], total: int, description: str) -> Iterator[Item]:
    """`batches` wrapped in a tqdm bar on stderr, cleared when done.

    Raises:
        ImportError: when tqdm is missing.
    """
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("the progress bar needs tqdm: pip install tqdm, or turn it off "
                          "(progress=False / quiet=True)") from None
    return iter(tqdm(batches, total=total, desc=description, leave=False, dynamic_ncols=True))


class ProgressLines:
    """Prints `epoch 3/40: batch 12/45, 4.2 s` to stderr (flushed) at most once every `every_s` seconds.

    A line follows the first batch that ends `every_s` or more after the first epoch started or
    after the previous line, over all epochs; the seconds shown count from the epoch's start.
    """

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic):
        self.every_s = every_s
        self.clock = clock
        self.last_line: float | None = None

    def wrap(self, batches: Iterable[Item], total: int, description: str) -> Iterator[Item]:
        """Yield `batches`, printing a line after a batch once `every_s` has passed since the last line."""
        started = self.clock()
        if self.last_line is None:
            self.last_line = started
        done = 0
        for batch in batches:
            yield batch
            done += 1
            now = self.clock()
            if now - self.last_line >= self.every_s:
                self.last_line = now
                print(f"{description}: batch {done}/{total}, {now - started:.1f} s", file=sys.stderr, flush=True)


def print_flushed(line: str) -> None:
    """Print `line` to stdout and flush, so it appears at once even through a pipe (stdout under mpiexec)."""
    print(line, flush=True)


def _tqdm_installed() -> bool:
    return importlib.util.find_spec("tqdm") is not None
