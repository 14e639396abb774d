"""A leading `python` in `mpiprop run`'s program, as other launchers take it (`mpiexec -n 2 python train.py`)."""
from __future__ import annotations

import os
import re
import shutil
import sys


def without_interpreter(program: list[str], python: str = sys.executable) -> tuple[list[str], str | None]:
    """`program` without a leading `python`, `python3`, `python3.N` or `python`'s path, and a warning or None.

    Every rank runs `python`, the interpreter mpiprop is installed in (the ranks' bootstrap
    imports mpiprop), so the word is dropped; the warning says so when it names another one.

    Raises:
        ValueError: when Python's own options follow it (`python -u train.py`), which cannot be passed on.
    """
    if not program or not names_python(program[0], python):
        return program, None
    named = shutil.which(program[0]) or program[0]
    warning = None
    if os.path.abspath(named) != os.path.abspath(python):
        warning = f"the ranks run {python} (mpiprop's Python), not {program[0]}"
    rest = program[1:]
    if rest[:1] and rest[0].startswith("-") and rest[0] != "-m":
        raise ValueError(f"Python's option {rest[0]!r} cannot be passed on; give the script (or -m module) right "
                         "after `python`, e.g. set PYTHONUNBUFFERED=1 instead of -u")
    return rest, warning


def names_python(word: str, python: str = sys.executable) -> bool:
    """True for `python`, `python3`, `python3.11` or a path to one, and for `python`'s own path."""
    if os.path.realpath(word) == os.path.realpath(python):
        return True
    return re.fullmatch(r"python(\d+(\.\d+)?)?", os.path.basename(word)) is not None
