"""Abort the whole MPI job when any rank raises, printing that rank's traceback first."""
from __future__ import annotations

import sys
import threading
import traceback
from types import TracebackType

from mpiprop.distributed.reliability.last_words import exit_after, write_last_words
from mpiprop.distributed.reliability.shared_memory_files import remove_job_files
from mpiprop.distributed.transport.mpi_library import abort_world, mpi_running, world_rank_and_size

ABORT_EXIT_CODE = 1
ABORT_WITHIN_S = 5.0  # past this, a rank whose MPI_Abort blocks (its launcher gone) ends by itself

_state = {"installed": False, "previous_excepthook": None, "previous_threading_hook": None}


def install_abort_handler() -> None:
    """Make an uncaught exception on this rank end every rank of the job promptly.

    Without this, a rank that raises exits while the others wait forever in their next
    collective. With it, the exception (in the main thread or any other thread) is
    printed to stderr as "rank R: <traceback line>" lines, the streams are flushed, and
    `MPI.COMM_WORLD.Abort(1)` ends the job, so `mpiexec` exits non-zero within seconds.
    In a single-process run the usual Python hook runs instead. Calling it again is a no-op;
    `mpiprop.distributed.start()` installs it (DataParallel, Pipeline and tensor_parallel_group call that).
    """
    if _state["installed"]:
        return
    _state["previous_excepthook"] = sys.excepthook
    _state["previous_threading_hook"] = threading.excepthook
    sys.excepthook = _abort_on_exception
    threading.excepthook = _abort_on_thread_exception
    _state["installed"] = True


def uninstall_abort_handler() -> None:
    """Restore the exception hooks that were in place before `install_abort_handler`."""
    if not _state["installed"]:
        return
    sys.excepthook = _state["previous_excepthook"]
    threading.excepthook = _state["previous_threading_hook"]
    _state["installed"] = False


def abort_handler_installed() -> bool:
    """True while `install_abort_handler` is in effect."""
    return bool(_state["installed"])


def format_rank_traceback(rank: int, exc_type: type[BaseException], exc: BaseException,
                          tb: TracebackType | None) -> str:
    """The traceback of `exc` with every line prefixed by "rank R: ", so ranks' output stays apart."""
    lines = "".join(traceback.format_exception(exc_type, exc, tb)).splitlines()
    return "".join(f"rank {rank}: {line}\n" for line in lines)


def abort_job(message: str = "", exit_code: int = ABORT_EXIT_CODE) -> None:
    """Write `message` (if any) to stderr and abort every rank of the MPI job with `exit_code`.

    Neither step depends on a working stderr (see `write_last_words`), and should MPI_Abort
    itself block, this process still ends after ABORT_WITHIN_S seconds. The job's files in
    /dev/shm on this node are removed first (see `remove_job_files`). Never returns.
    """
    exit_after(ABORT_WITHIN_S, exit_code)
    write_last_words(message)
    remove_job_files()
    abort_world(exit_code)


def _several_ranks_running() -> bool:
    return mpi_running() and world_rank_and_size()[1] > 1


def _abort_on_exception(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if not _several_ranks_running():
        _state["previous_excepthook"](exc_type, exc, tb)
        return
    rank, size = world_rank_and_size()
    abort_job(f"rank {rank}: uncaught exception; aborting all {size} ranks\n"
              + format_rank_traceback(rank, exc_type, exc, tb))


def _abort_on_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    if not _several_ranks_running():
        _state["previous_threading_hook"](args)
        return
    _abort_on_exception(args.exc_type, args.exc_value, args.exc_traceback)
