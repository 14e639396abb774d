"""NCCL collectives on cupy arrays, for ranks that each drive a GPU of their own."""
from __future__ import annotations

from typing import Any

from mpiprop.distributed.transport.gpu import current_gpu, current_stream_pointer, gpu_count, nccl_module
from mpiprop.distributed.transport.mpi_library import load_mpi
from mpiprop.network.backend import Array

NCCL_REDUCE_OPS = {"sum": "NCCL_SUM", "prod": "NCCL_PROD", "max": "NCCL_MAX", "min": "NCCL_MIN"}
NCCL_DTYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
               "int32": "NCCL_INT32", "int64": "NCCL_INT64", "uint8": "NCCL_UINT8", "int8": "NCCL_INT8"}


def nccl_usable(comm: Any, node: Any) -> bool:
    """Whether every rank of `comm` can use NCCL: NCCL present and one distinct GPU per rank on each node.

    `node` holds the ranks of `comm` on this node (a shared-memory split of it). Collective:
    all ranks must call it, and all get the same answer.
    """
    own_gpu = nccl_module() is not None and node.Get_size() <= gpu_count()
    gpus_on_node = node.allgather(current_gpu() if own_gpu else -1)
    own_gpu = own_gpu and len(set(gpus_on_node)) == len(gpus_on_node)
    return bool(comm.allreduce(own_gpu, op=load_mpi().LAND))


class NcclTransport:
    """Allreduce and broadcast of cupy arrays with NCCL, enqueued on cupy's current stream.

    The operations are ordered after the kernels already on that stream, so no host
    synchronisation is needed before them; `synchronize_stream()` waits for them.

    Args:
        comm: the MPI communicator whose ranks form the NCCL communicator (rank 0's
            unique id reaches the others through it). Collective.
    """

    def __init__(self, comm: Any):
        self.nccl = nccl_module()
        if self.nccl is None:
            raise RuntimeError("NCCL is not available: it needs cupy built with NCCL and a GPU")
        unique_id = self.nccl.get_unique_id() if comm.Get_rank() == 0 else None
        unique_id = comm.bcast(unique_id, root=0)
        self.nccl_comm = self.nccl.NcclCommunicator(comm.Get_size(), unique_id, comm.Get_rank())

    def allreduce(self, array: Array, op: str) -> None:
        """Reduce `array` in place over all ranks."""
        if op not in NCCL_REDUCE_OPS:
            raise ValueError(f"NCCL reduces with {sorted(NCCL_REDUCE_OPS)}, not {op!r}")
        reduce_op = getattr(self.nccl, NCCL_REDUCE_OPS[op])
        pointer = array.data.ptr
        self.nccl_comm.allReduce(pointer, pointer, array.size, self._dtype(array), reduce_op,
                                 current_stream_pointer())

    def bcast(self, array: Array, root: int) -> None:
        """Overwrite `array` with root's values, in place."""
        self.nccl_comm.bcast(array.data.ptr, array.size, self._dtype(array), root, current_stream_pointer())

    def free(self) -> None:
        """Release the NCCL communicator."""
        self.nccl_comm.destroy()

    def _dtype(self, array: Array) -> int:
        name = NCCL_DTYPES.get(array.dtype.name)
        if name is None:
            raise TypeError(f"NCCL cannot carry {array.dtype}; use one of {sorted(NCCL_DTYPES)}")
        return getattr(self.nccl, name)
