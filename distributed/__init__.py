"""distributed: the only package that talks MPI (data and pipeline parallelism).

Importing it installs the abort handler: from then on an uncaught exception on any rank
ends the whole job with that rank's traceback, even under plain `mpiexec python script.py`;
and, in a job of several ranks, a rank whose launcher is gone exits instead of waiting forever.
"""
from distributed.abort import abort_handler_installed, abort_job, install_abort_handler, uninstall_abort_handler
from distributed.buckets import DEFAULT_BUCKET_CAP_MB
from distributed.communicator import Communicator, as_communicator, mpi_comm_of
from distributed.data_parallel import DataParallel
from distributed.gradient_reducer import SyncStats
from distributed.metrics import average_metrics
from distributed.orphan_guard import exit_when_orphaned
from distributed.request import Request, poll_all, wait_all
from distributed.staging import mpi_cuda_aware
from distributed.watchdog import Watchdog, start_watchdog
from distributed.world import bind_gpu, is_main_rank, local_rank, rank, size

__all__ = [
    "Communicator", "Request", "wait_all", "poll_all", "as_communicator", "mpi_comm_of", "mpi_cuda_aware",
    "install_abort_handler", "uninstall_abort_handler", "abort_handler_installed", "abort_job",
    "Watchdog", "start_watchdog",
    "DataParallel", "SyncStats", "DEFAULT_BUCKET_CAP_MB",
    "rank", "size", "local_rank", "is_main_rank", "bind_gpu", "average_metrics",
]

# pipeline parallelism and the 2-D grid
from distributed.pipeline import Pipeline  # noqa: E402
from distributed.topology import Grid, make_grid  # noqa: E402

__all__ += ["Pipeline", "Grid", "make_grid"]

install_abort_handler()
exit_when_orphaned()
