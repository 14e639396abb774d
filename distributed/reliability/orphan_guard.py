"""End a rank whose launcher is gone, instead of letting it wait forever for ranks that no longer exist."""
from __future__ import annotations

import os
import threading
import time

from mpiprop.distributed.reliability.last_words import exit_with_last_words
from mpiprop.distributed.reliability.shared_memory_files import remove_job_files
from mpiprop.distributed.transport.mpi_library import world_rank_and_size

ORPHAN_EXIT_CODE = 4

_started = False


def exit_when_orphaned(check_every_s: float = 1.0) -> None:
    """Watch, from a daemon thread, for this rank's parent (mpiexec's per-node proxy) to disappear.

    When a job is aborted or its launcher is killed, a rank that misses the launcher's kill
    would otherwise spin in its next MPI wait forever. Once the parent process is gone, the
    rank says why (on descriptor 2, if anything still reads it) and exits with status 4,
    whether or not that message could be written. Only ranks of a job of several ranks are
    watched; calling this again does nothing.
    """
    global _started
    if _started:
        return
    rank, size = world_rank_and_size()
    if size == 1:
        return
    _started = True
    watch_parent(rank, check_every_s)


def watch_parent(rank: int, check_every_s: float = 1.0) -> threading.Thread:
    """Start the daemon thread that exits this process (status 4) once its parent process is gone."""
    launcher = os.getppid()

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(check_every_s)
        remove_job_files()
        exit_with_last_words(f"rank {rank}: its launcher (process {launcher}) is gone; exiting instead of waiting "
                             "for ranks that no longer exist", ORPHAN_EXIT_CODE)

    thread = threading.Thread(target=watch, name="mpiprop-orphan-guard", daemon=True)
    thread.start()
    return thread
