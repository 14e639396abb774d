"""distributed: the only package that talks MPI (data, pipeline and tensor parallelism).

Importing it has no side effect and needs no MPI library: MPI starts, and with it the job's
guards, at the first DataParallel, Pipeline or tensor_parallel_group, which every rank makes
(or at `start()`, called on every rank). From then on an uncaught exception on any rank ends
the whole job with that rank's traceback, even under plain `mpiexec python script.py`; see
`start` for the other guards (BLAS threads per rank, orphaned ranks, ranks that left, stalls,
SIGTERM). `close()` them, or use them in a `with` block, to release their communicators and
shared memory.
"""
from mpiprop.distributed.reliability.job_guards import start
from mpiprop.distributed.reliability.abort import abort_handler_installed, abort_job, install_abort_handler, uninstall_abort_handler
from mpiprop.distributed.reliability.finish_marks import leave_finish_mark_at_exit
from mpiprop.distributed.data_parallel.buckets import DEFAULT_BUCKET_CAP_MB
from mpiprop.distributed.transport.communicator import Communicator, as_communicator, mpi_comm_of
from mpiprop.distributed.data_parallel.data_parallel import DataParallel
from mpiprop.distributed.data_parallel.gradient_sync import SyncStats
from mpiprop.distributed.data_parallel.gradient_sync import GradientSync
from mpiprop.distributed.data_parallel.compression import Float16Compression, NoCompression
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
from mpiprop.distributed.transport.mpi_library import library_facts as mpi_library_facts

__all__ = [
    "start",
    "Communicator", "Request", "wait_all", "poll_all", "as_communicator", "mpi_comm_of", "mpi_cuda_aware",
    "install_abort_handler", "uninstall_abort_handler", "abort_handler_installed", "abort_job",
    "Watchdog", "start_watchdog", "start_watchdog_from_environment", "waiting_in", "mpi_library_facts",
    "DataParallel", "GradientSync", "SyncStats", "DEFAULT_BUCKET_CAP_MB", "NoCompression", "Float16Compression",
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

from mpiprop.network.version import __version__  # noqa: E402
