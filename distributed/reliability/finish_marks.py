"""A rank whose program ends normally leaves a mark, so `mpiprop run` can tell whether every rank finished."""
from __future__ import annotations

import atexit
import contextlib
import os

FINISH_MARKS_VARIABLE = "MPIPROP_FINISH_MARKS"  # a folder, set by `mpiprop run` on one node


def leave_finish_mark_at_exit(rank: int) -> None:
    """When FINISH_MARKS_VARIABLE names a folder, create FOLDER/rank-R as this process exits normally.

    Python runs it at exit (the program's end, `sys.exit` with any status), not when the
    process is killed or calls `os._exit`: MPICH then ends the other ranks and may report
    status 0, so a missing mark is what tells the launcher.
    """
    folder = os.environ.get(FINISH_MARKS_VARIABLE)
    if folder:
        atexit.register(_leave_mark, folder, rank)


def _leave_mark(folder: str, rank: int) -> None:
    with contextlib.suppress(OSError):
        open(os.path.join(folder, f"rank-{rank}"), "w").close()
