"""A tqdm progress bar that appears only where someone can watch it: rank 0, a terminal, not quiet."""
from __future__ import annotations

import importlib.util
import sys
from typing import Iterable, Iterator, TypeVar

Item = TypeVar("Item")


def progress_wanted(requested: bool | None, rank: int, quiet: bool) -> bool:
    """Whether to draw a bar: never off rank 0 or when quiet; with `requested` None, only on a terminal with tqdm."""
    if rank != 0 or quiet or requested is False:
        return False
    if requested:
        return True
    return sys.stderr.isatty() and _tqdm_installed()


def progress(iterable: Iterable[Item], total: int, description: str, enabled: bool) -> Iterator[Item]:
    """`iterable` itself, or wrapped in a tqdm bar (on stderr, cleared when done) when `enabled`.

    Raises:
        ImportError: when a bar is enabled but tqdm is missing.
    """
    if not enabled:
        return iter(iterable)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError("the progress bar needs tqdm: pip install tqdm, or turn it off "
                          "(progress=False / quiet=True)") from None
    return iter(tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True))


def _tqdm_installed() -> bool:
    return importlib.util.find_spec("tqdm") is not None
