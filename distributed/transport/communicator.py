"""Communicator: a private clone of an MPI communicator with array-based collectives and messages."""
from __future__ import annotations

import functools
from typing import Any

from mpi4py import MPI

from mpiprop.distributed.reliability.abort import install_abort_handler
from mpiprop.distributed.transport.nccl_transport import NCCL_REDUCE_OPS, NcclTransport, nccl_usable
from mpiprop.distributed.transport.request import Request
from mpiprop.distributed.transport.staging import mpi_cuda_aware, must_stage, receive_buffer, send_buffer
from mpiprop.distributed.reliability.waits import waiting_in
from mpiprop.distributed.reliability.watchdog import start_watchdog_from_environment
from mpiprop.network.backend import Array, device_of, is_array

REDUCE_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN, "prod": MPI.PROD}

MpiComm = MPI.Comm


class Communicator:
    """Array-based MPI calls over a clone of `comm`, so library traffic never meets user messages.

    Arrays may be numpy or cupy. Reductions and broadcasts of cupy arrays go through NCCL
    when every rank drives a GPU of its own (see `nccl_usable`). Otherwise, and for
    messages, a cupy array is handed to MPI directly when MPI is CUDA-aware (after
    synchronising the current stream), else through a page-locked host copy that is
    copied back once the operation completes. Reductions and receives write into the
    array passed in (in place); non-blocking calls return a `Request` whose `wait()`
    finishes that copy.

    Args:
        comm: an mpi4py communicator, another Communicator, or None for MPI.COMM_WORLD.
        clone: duplicate `comm` (the default); False adopts it as is (e.g. the result of a Split).
        force_host_staging: stage every array through host memory even when MPI could read
            it directly (exercises the GPU copy path with numpy arrays).
        abort_on_exception: install `install_abort_handler()` so any rank's exception ends the job,
            and start the stall watchdog when MPIPROP_STALL_TIMEOUT is set (see `mpiprop.distributed.reliability.watchdog`).
        use_nccl: "auto" (NCCL for cupy collectives when every rank has its own GPU), or False.

    Raises:
        TypeError: when `comm` is neither None, an mpi4py Comm nor a Communicator.
    """

    def __init__(self, comm: "MpiComm | Communicator | None" = None, *, clone: bool = True,
                 force_host_staging: bool = False, abort_on_exception: bool = True,
                 use_nccl: str | bool = "auto"):
        if use_nccl not in ("auto", False):
            raise ValueError(f"use_nccl must be 'auto' or False, got {use_nccl!r}")
        base = mpi_comm_of(comm)
        self.mpi_comm: MpiComm = base.Clone() if clone else base
        self.force_host_staging = bool(force_host_staging)
        self.cuda_aware = mpi_cuda_aware()
        node = self.mpi_comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.mpi_comm.Get_rank())
        try:
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            self.nccl_enabled = use_nccl == "auto" and not force_host_staging and nccl_usable(self.mpi_comm, node)
        finally:
            node.Free()
        self._nccl: NcclTransport | None = None  # made at the first GPU collective (NCCL setup is costly)
        if abort_on_exception:
            install_abort_handler()
            start_watchdog_from_environment(MPI.COMM_WORLD.Get_rank())

    # --- who am I -----------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self.mpi_comm.Get_rank()

    @property
    def size(self) -> int:
        return self.mpi_comm.Get_size()

    @functools.cached_property
    def world_ranks(self) -> frozenset[int]:
        """The COMM_WORLD ranks of this communicator's ranks: those its waits depend on."""
        group, world = self.mpi_comm.Get_group(), MPI.COMM_WORLD.Get_group()
        try:
            return frozenset(MPI.Group.Translate_ranks(group, list(range(group.Get_size())), world))
        finally:
            group.Free()
            world.Free()

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that prints, logs and writes checkpoints."""
        return self.rank == 0

    # --- collectives on arrays --------------------------------------------------------
    def allreduce(self, array: Array, op: str | MPI.Op = "sum") -> Array:
        """Reduce `array` over all ranks, in place; returns `array`."""
        self.iallreduce(array, op).wait()
        return array

    def iallreduce(self, array: Array, op: str | MPI.Op = "sum") -> Request:
        """Start an in-place reduction of `array` over all ranks; `wait()` the returned request."""
        if self._goes_through_nccl(array) and isinstance(op, str) and op in NCCL_REDUCE_OPS:
            self._nccl_transport().allreduce(array, op)
            return Request(MPI.REQUEST_NULL)  # ordered on the array's stream: nothing left to wait for
        mpi_op = _reduce_op(op)
        buffer, copy_back = self._receive_buffer(array, keep_contents=True, what="iallreduce")
        mpi_request = self.mpi_comm.Iallreduce(MPI.IN_PLACE, buffer, op=mpi_op)
        return Request(mpi_request, copy_back, keep_alive=buffer, what=f"allreduce of {_describe(array)}",
                       ranks=self.world_ranks)

    def bcast(self, array: Array, root: int = 0) -> Array:
        """Overwrite `array` on every rank with root's values, in place; returns `array`."""
        self._check_rank(root, "root")
        if self._goes_through_nccl(array):
            self._nccl_transport().bcast(array, root)
            return array
        buffer, copy_back = self._receive_buffer(array, keep_contents=self.rank == root, what="bcast")
        with waiting_in(f"broadcast of {_describe(array)} from rank {root}", self.world_ranks):
            self.mpi_comm.Bcast(buffer, root=root)
        if copy_back is not None and self.rank != root:
            copy_back()
        return array

    def barrier(self) -> None:
        """Wait until every rank reaches this call."""
        with waiting_in("barrier", self.world_ranks):
            self.mpi_comm.Barrier()

    def ibarrier(self, what: str = "a barrier") -> Request:
        """Start a barrier; the request completes once every rank has started it. `what` it
        stands for is named in the stall watchdog's report."""
        return Request(self.mpi_comm.Ibarrier(), what=what, ranks=self.world_ranks)

    # --- point to point on arrays -------------------------------------------------------
    def send(self, array: Array, dest: int, tag: int = 0) -> None:
        """Send `array` to rank `dest` (blocking)."""
        self.isend(array, dest, tag).wait()

    def recv(self, array: Array, source: int, tag: int = 0) -> Array:
        """Receive into `array` (shape and dtype must match the sender's) from `source`; returns it."""
        self.irecv(array, source, tag).wait()
        return array

    def isend(self, array: Array, dest: int, tag: int = 0) -> Request:
        """Start sending `array` to `dest`; do not modify it until the request is waited on."""
        self._check_rank(dest, "dest")
        buffer = self._send_buffer(array, what="isend")
        return Request(self.mpi_comm.Isend(buffer, dest=dest, tag=tag), keep_alive=buffer,
                       what=f"send of {_describe(array)} to rank {dest} (tag {tag})", ranks=self.world_ranks)

    def irecv(self, array: Array, source: int, tag: int = 0) -> Request:
        """Start receiving into `array` from `source` (MPI.ANY_SOURCE allowed); valid after `wait()`."""
        if source != MPI.ANY_SOURCE:
            self._check_rank(source, "source")
        buffer, copy_back = self._receive_buffer(array, keep_contents=False, what="irecv")
        return Request(self.mpi_comm.Irecv(buffer, source=source, tag=tag), copy_back, keep_alive=buffer,
                       what=f"receive of {_describe(array)} from rank {source} (tag {tag})",
                       ranks=self.world_ranks)

    def sendrecv(self, send_array: Array, dest: int, recv_array: Array, source: int,
                 send_tag: int = 0, recv_tag: int = 0) -> Array:
        """Send to `dest` and receive from `source` at once (no deadlock in a ring); returns `recv_array`."""
        receive = self.irecv(recv_array, source, recv_tag)
        send = self.isend(send_array, dest, send_tag)
        send.wait()
        receive.wait()
        return recv_array

    # --- small Python objects (pickled) -------------------------------------------------
    def allgather_object(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank."""
        with waiting_in("allgather of a Python object", self.world_ranks):
            return self.mpi_comm.allgather(value)

    def bcast_object(self, value: Any, root: int = 0) -> Any:
        """Root's `value` on every rank."""
        self._check_rank(root, "root")
        with waiting_in(f"broadcast of a Python object from rank {root}", self.world_ranks):
            return self.mpi_comm.bcast(value, root=root)

    # --- sub-communicators and cleanup ---------------------------------------------------
    def split(self, color: int, key: int | None = None) -> "Communicator":
        """Ranks passing the same `color` form a new Communicator, ordered by `key` (default: rank)."""
        sub = self.mpi_comm.Split(color, self.rank if key is None else key)
        return Communicator(sub, clone=False, force_host_staging=self.force_host_staging, abort_on_exception=False,
                            use_nccl="auto" if self.nccl_enabled else False)

    def free(self) -> None:
        """Release the cloned MPI communicator (collective); the object is unusable afterwards."""
        if self.mpi_comm != MPI.COMM_NULL and self.mpi_comm not in (MPI.COMM_WORLD, MPI.COMM_SELF):
            self.mpi_comm.Free()

    def __repr__(self) -> str:
        return f"Communicator(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    # --- how arrays reach MPI or NCCL -------------------------------------------------------
    def _goes_through_nccl(self, array: Array) -> bool:
        return self.nccl_enabled and is_array(array) and device_of(array) != "cpu" and array.flags.c_contiguous

    def _nccl_transport(self) -> NcclTransport:
        if self._nccl is None:
            self._nccl = NcclTransport(self.mpi_comm)
        return self._nccl

    def _send_buffer(self, array: Array, what: str) -> Array:
        _check_array(array, what)
        return send_buffer(array, must_stage(array, self.cuda_aware, self.force_host_staging))

    def _receive_buffer(self, array: Array, keep_contents: bool, what: str):
        _check_array(array, what)
        stage = must_stage(array, self.cuda_aware, self.force_host_staging)
        return receive_buffer(array, stage, keep_contents=keep_contents)

    def _check_rank(self, rank: int, name: str) -> None:
        if not 0 <= rank < self.size:
            raise ValueError(f"{name}={rank} is not a rank of this communicator of size {self.size}; "
                             f"use 0..{self.size - 1}")


def mpi_comm_of(comm: "MpiComm | Communicator | None") -> MpiComm:
    """The mpi4py communicator behind `comm` (MPI.COMM_WORLD for None).

    Raises:
        TypeError: when `comm` is neither None, an mpi4py Comm nor a Communicator.
    """
    if comm is None:
        return MPI.COMM_WORLD
    if isinstance(comm, Communicator):
        return comm.mpi_comm
    if isinstance(comm, MPI.Comm):
        return comm
    raise TypeError(f"comm must be an mpi4py communicator, a Communicator or None, got {type(comm).__name__}")


def as_communicator(comm: "MpiComm | Communicator | None" = None) -> Communicator:
    """`comm` itself when it is a Communicator, else a new Communicator over a clone of it (or of COMM_WORLD)."""
    return comm if isinstance(comm, Communicator) else Communicator(comm)


def _reduce_op(op: str | MPI.Op) -> MPI.Op:
    if isinstance(op, MPI.Op):
        return op
    if op not in REDUCE_OPS:
        raise ValueError(f"unknown reduction {op!r}; use one of {sorted(REDUCE_OPS)} or an mpi4py MPI.Op")
    return REDUCE_OPS[op]


def _check_array(array: Array, what: str) -> None:
    if not is_array(array):
        raise TypeError(f"{what} needs a numpy or cupy array, got {type(array).__name__}; "
                        "use numpy.asarray(value), or the *_object methods for Python objects")


def _describe(array: Array) -> str:
    return f"{array.size} {array.dtype}"
