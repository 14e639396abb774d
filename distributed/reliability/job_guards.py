"""The job's guards, started once on each rank by its first collective construction or `mpiprop.distributed.start()`."""
from __future__ import annotations

from mpiprop.distributed.reliability.abort import install_abort_handler
from mpiprop.distributed.reliability.finish_marks import leave_finish_mark_at_exit
from mpiprop.distributed.reliability.orphan_guard import exit_when_orphaned
from mpiprop.distributed.reliability.peer_listener import start_peer_listener
from mpiprop.distributed.reliability.signal_exit import report_ending_signals
from mpiprop.distributed.reliability.watchdog import start_watchdog_from_environment
from mpiprop.distributed.transport.blas_threads import place_threads
from mpiprop.distributed.transport.mpi_library import world_rank_and_size
from mpiprop.distributed.transport.world import world_node

_started = False


def start() -> None:
    """Start MPI and this rank's guards, once; the first call is collective over MPI.COMM_WORLD.

    DataParallel, Pipeline and tensor_parallel_group call it, so every rank of a job calls it
    with its first such construction; a program that builds them on some ranks only calls it
    on every rank first. From then on an uncaught exception on any rank ends the whole job with
    that rank's traceback; in a job of several ranks each rank's BLAS threads are the node's
    cores divided by its ranks (unless OMP_NUM_THREADS, OPENBLAS_NUM_THREADS or MKL_NUM_THREADS
    is set, and a node with more ranks than cores warns once); a rank whose launcher is gone
    exits; a rank left waiting for one that ended its program aborts the job naming it; a rank
    ended by SIGTERM or SIGHUP says so; and with MPIPROP_STALL_TIMEOUT set the stall watchdog
    runs. Later calls do nothing.

    Raises:
        ImportError: when there is no MPI library (saying how to install one).
    """
    global _started
    if _started:
        return
    rank, size = world_rank_and_size()
    _started = True
    install_abort_handler()
    if size > 1:
        place_threads(world_node())
    exit_when_orphaned()
    start_peer_listener()
    report_ending_signals(rank)
    leave_finish_mark_at_exit(rank)
    start_watchdog_from_environment(rank)


def started() -> bool:
    """Whether `start()` ran in this process."""
    return _started
