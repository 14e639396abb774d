"""distributed: the only package that talks MPI (data and pipeline parallelism).

Importing it loads the MPI library (an ImportError says how to install one when there is none)
and installs the abort handler: from then on an uncaught exception on any rank ends the whole
job with that rank's traceback, even under plain `mpiexec python script.py`. In a job of several
ranks it also limits each rank's BLAS threads to its node's cores divided by the ranks on the
node (unless OMP_NUM_THREADS, OPENBLAS_NUM_THREADS or MKL_NUM_THREADS is set), warns once per
node when there are more ranks than cores, and makes a rank whose launcher is gone exit instead
of waiting forever; a rank left waiting for one that ended its program aborts the job naming
it; with MPIPROP_STALL_TIMEOUT set, the stall watchdog starts too; a rank ended by SIGTERM or
SIGHUP says so on stderr before it dies of the signal. Importing it is collective then: every
rank of the job imports it.
"""
from mpiprop.distributed.transport.mpi_library import load_mpi

_MPI = load_mpi()  # first, so that a missing MPI library is reported as such

from mpiprop.distributed.reliability.abort import abort_handler_installed, abort_job, install_abort_handler, uninstall_abort_handler
from mpiprop.distributed.reliability.finish_marks import leave_finish_mark_at_exit
from mpiprop.distributed.data_parallel.buckets import DEFAULT_BUCKET_CAP_MB
from mpiprop.distributed.transport.communicator import Communicator, as_communicator, mpi_comm_of
from mpiprop.distributed.data_parallel.data_parallel import DataParallel
from mpiprop.distributed.data_parallel.gradient_reducer import SyncStats
from mpiprop.distributed.data_parallel.gradient_sync import GradientSync
from mpiprop.distributed.transport.memory_reports import gather_memory_reports
from mpiprop.distributed.transport.metric_averaging import average_metrics
from mpiprop.distributed.reliability.orphan_guard import exit_when_orphaned
from mpiprop.distributed.reliability.peer_listener import start_peer_listener
from mpiprop.distributed.reliability.signal_exit import report_ending_signals
from mpiprop.distributed.reliability.waits import waiting_in
from mpiprop.distributed.transport.request import Request, poll_all, wait_all
from mpiprop.distributed.transport.staging import mpi_cuda_aware
from mpiprop.distributed.reliability.watchdog import Watchdog, start_watchdog, start_watchdog_from_environment
from mpiprop.distributed.transport.world import bind_gpu, is_main_rank, local_rank, rank, size, world_node
from mpiprop.distributed.transport.blas_threads import place_threads

__all__ = [
    "Communicator", "Request", "wait_all", "poll_all", "as_communicator", "mpi_comm_of", "mpi_cuda_aware",
    "install_abort_handler", "uninstall_abort_handler", "abort_handler_installed", "abort_job",
    "Watchdog", "start_watchdog", "waiting_in",
    "DataParallel", "GradientSync", "SyncStats", "DEFAULT_BUCKET_CAP_MB",
    "rank", "size", "local_rank", "is_main_rank", "bind_gpu", "average_metrics", "gather_memory_reports",
]

# pipeline parallelism and the 2-D grid
from mpiprop.distributed.pipeline.pipeline import Pipeline  # noqa: E402
from mpiprop.distributed.pipeline.topology import Grid, make_grid  # noqa: E402

__all__ += ["Pipeline", "Grid", "make_grid"]

# tensor parallelism
from mpiprop.distributed.tensor_parallel import (  # noqa: E402
    ColumnParallelLinear, RowParallelLinear, full_state_dict, load_full_state_dict, tensor_parallel_group,
)

__all__ += ["ColumnParallelLinear", "RowParallelLinear", "tensor_parallel_group", "full_state_dict",
            "load_full_state_dict"]
from mpiprop.distributed.tensor_parallel import (  # noqa: E402
    VocabParallelCrossEntropy, tensor_parallel_gpt,
)

__all__ += ["VocabParallelCrossEntropy", "tensor_parallel_gpt"]

install_abort_handler()
if _MPI.COMM_WORLD.Get_size() > 1:
    place_threads(world_node())
exit_when_orphaned()
start_peer_listener()
report_ending_signals(rank())
leave_finish_mark_at_exit(rank())
start_watchdog_from_environment(rank())

from mpiprop.network.version import __version__  # noqa: E402
