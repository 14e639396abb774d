"""distributed: the only package that talks MPI (data and pipeline parallelism).

Importing it installs the abort handler: from then on an uncaught exception on any rank
ends the whole job with that rank's traceback, even under plain `mpiexec python script.py`;
and, in a job of several ranks, a rank whose launcher is gone exits instead of waiting forever,
and a rank left waiting for one that ended its program aborts the job naming it. With
MPIPROP_STALL_TIMEOUT set, the stall watchdog starts too. A rank ended by SIGTERM or SIGHUP
says so on stderr before it dies of the signal.
"""
from mpiprop.distributed.reliability.abort import abort_handler_installed, abort_job, install_abort_handler, uninstall_abort_handler
from mpiprop.distributed.reliability.finish_marks import leave_finish_mark_at_exit
from mpiprop.distributed.data_parallel.buckets import DEFAULT_BUCKET_CAP_MB
from mpiprop.distributed.transport.communicator import Communicator, as_communicator, mpi_comm_of
from mpiprop.distributed.data_parallel.data_parallel import DataParallel
from mpiprop.distributed.data_parallel.gradient_reducer import SyncStats
from mpiprop.distributed.transport.metric_averaging import average_metrics
from mpiprop.distributed.reliability.orphan_guard import exit_when_orphaned
from mpiprop.distributed.reliability.peer_listener import start_peer_listener
from mpiprop.distributed.reliability.signal_exit import report_ending_signals
from mpiprop.distributed.reliability.waits import waiting_in
from mpiprop.distributed.transport.request import Request, poll_all, wait_all
from mpiprop.distributed.transport.staging import mpi_cuda_aware
from mpiprop.distributed.reliability.watchdog import Watchdog, start_watchdog, start_watchdog_from_environment
from mpiprop.distributed.transport.world import bind_gpu, is_main_rank, local_rank, rank, size

__all__ = [
    "Communicator", "Request", "wait_all", "poll_all", "as_communicator", "mpi_comm_of", "mpi_cuda_aware",
    "install_abort_handler", "uninstall_abort_handler", "abort_handler_installed", "abort_job",
    "Watchdog", "start_watchdog", "waiting_in",
    "DataParallel", "SyncStats", "DEFAULT_BUCKET_CAP_MB",
    "rank", "size", "local_rank", "is_main_rank", "bind_gpu", "average_metrics",
]

# pipeline parallelism and the 2-D grid
from mpiprop.distributed.pipeline.pipeline import Pipeline  # noqa: E402
from mpiprop.distributed.pipeline.topology import Grid, make_grid  # noqa: E402

__all__ += ["Pipeline", "Grid", "make_grid"]

install_abort_handler()
exit_when_orphaned()
start_peer_listener()
report_ending_signals(rank())
leave_finish_mark_at_exit(rank())
start_watchdog_from_environment(rank())
