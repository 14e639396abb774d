"""Communicator: a private clone of an MPI communicator, and the one door into MPI (one method per collective)."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy

from mpiprop.distributed.reliability.waits import waiting_in
from mpiprop.distributed.transport.mpi_library import load_mpi, mpi_finalized
from mpiprop.distributed.transport.nccl_transport import NCCL_REDUCE_OPS, NcclTransport, nccl_usable
from mpiprop.distributed.transport.request import Request
from mpiprop.distributed.transport.shared_exchange import SharedExchange
from mpiprop.distributed.transport.shared_memory_room import window_prints_errors
from mpiprop.distributed.transport.shared_window import SharedWindow
from mpiprop.distributed.transport.staging import mpi_cuda_aware, must_stage, receive_buffer, send_buffer
from mpiprop.network.backend import Array, device_of, is_array

if TYPE_CHECKING:
    from mpi4py.MPI import Comm as MpiComm, Op as MpiOp
else:
    MpiComm = MpiOp = Any

REDUCE_OP_NAMES = {"sum": "SUM", "max": "MAX", "min": "MIN", "prod": "PROD", "and": "LAND", "or": "LOR"}


class Communicator:
    """Array-based MPI calls over a clone of `comm`, so library traffic never meets user messages.

    Arrays may be numpy or cupy. Reductions and broadcasts of cupy arrays go through NCCL
    when every rank drives a GPU of its own (see `nccl_usable`). Otherwise, and for
    messages, a cupy array is handed to MPI directly when MPI is CUDA-aware (after
    synchronising the current stream), else through a page-locked host copy that is
    copied back once the operation completes. Reductions and receives write into the
    array passed in (in place); non-blocking calls return a `Request` whose `wait()`
    finishes that copy. Making one starts no thread and installs no handler.

    After `share_memory()`, sums and gathers of large numpy arrays go through a window the ranks
    share instead of MPI's collectives (`SharedExchange`), where the ranks all run on one node.

    Sub-communicators (`split`, `split_by_node`, `clone`) and shared windows (`allocate_shared`)
    made through it are freed with it: `free()`, `close()` or leaving a `with` block (other than
    by an exception) releases them all (collective); using it afterwards raises RuntimeError.

    Args:
        comm: an mpi4py communicator, another Communicator (whose host staging and NCCL choices the
            clone keeps), or None for MPI.COMM_WORLD.
        clone: duplicate `comm` (the default); False adopts it as is (e.g. the result of a Split).
        force_host_staging: stage every array through host memory even when MPI could read
            it directly (exercises the GPU copy path with numpy arrays).
        use_nccl: "auto" (NCCL for cupy collectives when every rank has its own GPU), or False.

    Raises:
        TypeError: when `comm` is neither None, an mpi4py Comm nor a Communicator.
        ImportError: when there is no MPI library (saying how to install one).
    """

    def __init__(self, comm: "MpiComm | Communicator | None" = None, *, clone: bool = True,
                 force_host_staging: bool = False, use_nccl: str | bool = "auto"):
        if use_nccl not in ("auto", False):
            raise ValueError(f"use_nccl must be 'auto' or False, got {use_nccl!r}")
        if isinstance(comm, Communicator):  # its clone keeps its choices
            force_host_staging = force_host_staging or comm.force_host_staging
            use_nccl = use_nccl if comm.nccl_enabled else False
        self._mpi = load_mpi()
        base = mpi_comm_of(comm)
        self._mpi_comm: MpiComm = base.Clone() if clone else base
        self._resources: list[Any] = []  # sub-communicators and windows made through this one, freed with it
        self._on_free: Any = None
        self._freed = False
        self.force_host_staging = bool(force_host_staging)
        self.cuda_aware = mpi_cuda_aware()
        node = self._mpi_comm.Split_type(self._mpi.COMM_TYPE_SHARED, key=self._mpi_comm.Get_rank())
        try:
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            self.nccl_enabled = (use_nccl == "auto" and not force_host_staging
                                 and nccl_usable(self._mpi_comm, node))
        finally:
            node.Free()
        self._nccl: NcclTransport | None = None  # made at the first GPU collective (NCCL setup is costly)
        self._exchange: SharedExchange | None = None  # set by share_memory()

    @property
    def mpi_comm(self) -> MpiComm:
        """The mpi4py communicator underneath (for the user's own MPI calls).

        Raises:
            RuntimeError: once this communicator was freed.
        """
        if self._freed:
            raise RuntimeError("this Communicator was closed (freed), with the DataParallel, Pipeline or group "
                               "that held it; build a new one")
        return self._mpi_comm

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
        group, world = self.mpi_comm.Get_group(), self._mpi.COMM_WORLD.Get_group()
        try:
            return frozenset(self._mpi.Group.Translate_ranks(group, list(range(group.Get_size())), world))
        finally:
            group.Free()
            world.Free()

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that prints, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def tag_bound(self) -> int | None:
        """The largest message tag MPI accepts on this communicator (None where MPI does not say)."""
        return self.mpi_comm.Get_attr(self._mpi.TAG_UB)

    # --- collectives on arrays --------------------------------------------------------
    def share_memory(self) -> bool:
        """From now on, sum and gather numpy arrays of `shared_exchange.SMALLEST_BYTES` or more through a window
        the ranks share (`SharedExchange`), where they all run on one node and MPI's windows are safe (see
        `window_prints_errors`); returns whether they will. The same calls give the same results."""
        if self.size > 1 and self.local_size == self.size and not window_prints_errors():
            self._exchange = SharedExchange(self)
        return self._exchange is not None

    def allreduce(self, array: Array, op: "str | MpiOp" = "sum") -> Array:
        """Reduce `array` over all ranks, in place; returns `array`."""
        self.iallreduce(array, op).wait()
        return array

    def iallreduce(self, array: Array, op: "str | MpiOp" = "sum") -> Request:
        """Start an in-place reduction of `array` over all ranks; `wait()` the returned request."""
        if self._goes_through_nccl(array) and isinstance(op, str) and op in NCCL_REDUCE_OPS:
            self._nccl_transport().allreduce(array, op)
            return Request(self._mpi.REQUEST_NULL)  # ordered on the array's stream: nothing left to wait for
        if self._shared(array, op) and self._exchange.allreduce(array, f"allreduce of {_describe(array)}"):
            return Request(self._mpi.REQUEST_NULL)  # done
        buffer, copy_back = self._receive_buffer(array, keep_contents=True, what="iallreduce")
        mpi_request = self.mpi_comm.Iallreduce(self._mpi.IN_PLACE, buffer, op=self._reduce_op(op))
        return Request(mpi_request, copy_back, keep_alive=buffer, what=f"allreduce of {_describe(array)}",
                       ranks=self.world_ranks)

    def max_later(self, value: int) -> Callable[[], int]:
        """Start the maximum of the integer `value` over all ranks; the returned function waits for it and gives it."""
        largest = numpy.array([value], dtype=numpy.int64)
        request = self.iallreduce(largest, "max")

        def result() -> int:
            request.wait()
            return int(largest[0])
        return result

    def ireduce_scatter(self, array: Array, part: Array, counts: Sequence[int], op: "str | MpiOp" = "sum") -> Request:
        """Start reducing `array` over all ranks into `part`, rank r receiving `counts[r]` elements in order."""
        if self._shared(array, op) and self._exchange.reduce_scatter(
                array, part, counts, f"reduce-scatter of {_describe(array)}"):
            return Request(self._mpi.REQUEST_NULL)  # done
        source = self._send_buffer(array, "ireduce_scatter")
        buffer, copy_back = self._receive_buffer(part, keep_contents=False, what="ireduce_scatter")
        mpi_request = self.mpi_comm.Ireduce_scatter(source, buffer, list(counts), self._reduce_op(op))
        return Request(mpi_request, copy_back, keep_alive=(source, buffer),
                       what=f"reduce-scatter of {_describe(array)}", ranks=self.world_ranks)

    def allgatherv(self, array: Array, counts: Sequence[int]) -> Array:
        """Rank r's `counts[r]` elements, at their place in `array` (ranks in order), on every rank; in place."""
        if self._shared(array) and self._exchange.allgatherv(array, counts, f"allgather of {_describe(array)}"):
            return array
        buffer, copy_back = self._receive_buffer(array, keep_contents=True, what="allgatherv")
        displacements = [sum(counts[:rank]) for rank in range(len(counts))]
        with waiting_in(f"allgather of {_describe(array)}", self.world_ranks):
            if len(set(counts)) == 1 and sum(counts) == buffer.size:  # MPI's plain Allgather is the faster one
                self.mpi_comm.Allgather(self._mpi.IN_PLACE, buffer)
            else:
                self.mpi_comm.Allgatherv(self._mpi.IN_PLACE, [buffer, (list(counts), displacements)])
        if copy_back is not None:
            copy_back()
        return array

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
        if source != self._mpi.ANY_SOURCE:
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

    def gather_object(self, value: Any, root: int = 0) -> list[Any] | None:
        """Every rank's `value`, in rank order, on `root`; None on the other ranks."""
        self._check_rank(root, "root")
        with waiting_in(f"gather of a Python object to rank {root}", self.world_ranks):
            return self.mpi_comm.gather(value, root=root)

    def allreduce_object(self, value: Any, op: "str | MpiOp" = "sum") -> Any:
        """`value` reduced over all ranks with `op` ("sum", "max", "min", "prod", "and", "or")."""
        with waiting_in("allreduce of a Python object", self.world_ranks):
            return self.mpi_comm.allreduce(value, op=self._reduce_op(op))

    def bcast_object(self, value: Any, root: int = 0) -> Any:
        """Root's `value` on every rank."""
        self._check_rank(root, "root")
        with waiting_in(f"broadcast of a Python object from rank {root}", self.world_ranks):
            return self.mpi_comm.bcast(value, root=root)

    def send_object(self, value: Any, dest: int, tag: int = 0) -> None:
        """Send `value` to rank `dest` (blocking)."""
        self._check_rank(dest, "dest")
        self.mpi_comm.send(value, dest=dest, tag=tag)

    def isend_object(self, value: Any, dest: int, tag: int = 0) -> Request:
        """Start sending `value` to rank `dest`."""
        self._check_rank(dest, "dest")
        return Request(self.mpi_comm.isend(value, dest=dest, tag=tag), what=f"send of an object to rank {dest}",
                       ranks=self.world_ranks)

    def recv_object(self, source: int, tag: int = 0) -> Any:
        """The next object from `source` with `tag` (blocking)."""
        return self.mpi_comm.recv(source=source, tag=tag)

    def probe(self) -> tuple[int, int] | None:
        """(source, tag) of a message from any rank with any tag that waits to be received, or None (never blocks)."""
        status = self._mpi.Status()
        if not self.mpi_comm.Iprobe(self._mpi.ANY_SOURCE, self._mpi.ANY_TAG, status):
            return None
        return status.Get_source(), status.Get_tag()

    # --- sub-communicators and shared memory, freed with this one ---------------------------
    def split(self, color: int | None, key: int | None = None) -> "Communicator | None":
        """Ranks passing the same `color` form a new Communicator, ordered by `key` (default: rank); None
        for a rank passing None."""
        mpi = self._mpi
        sub = self.mpi_comm.Split(mpi.UNDEFINED if color is None else color, self.rank if key is None else key)
        return None if sub == mpi.COMM_NULL else self._adopt(sub)

    def split_by_node(self) -> "Communicator":
        """The ranks of this communicator on this node (they can share memory), in rank order."""
        return self._adopt(self.mpi_comm.Split_type(self._mpi.COMM_TYPE_SHARED, key=self.rank))

    def clone(self) -> "Communicator":
        """The same ranks on a communicator of their own (messages never meet this one's)."""
        return self._adopt(self.mpi_comm.Clone())

    def allocate_shared(self, nbytes: int) -> SharedWindow:
        """A window of `nbytes` bytes per rank that every rank of this communicator (all on one node) can read."""
        with waiting_in(f"allocation of a shared window of {nbytes} bytes", self.world_ranks):
            return self._track(SharedWindow(nbytes, self.mpi_comm))

    def detach(self, resource: "Communicator | SharedWindow") -> None:
        """Stop freeing `resource` with this communicator; it then lives until its own `free()`."""
        self._forget(resource)
        resource._on_free = None

    # --- end of life ---------------------------------------------------------------------------
    def free(self) -> None:
        """Release the MPI communicator and everything made through it (collective); calling it again does
        nothing, and any other use afterwards raises RuntimeError."""
        if self._freed:
            return
        for resource in reversed(list(self._resources)):
            resource.free()
        if self._on_free is not None:
            self._on_free(self)
        self._freed = True
        if self._nccl is not None:
            self._nccl.free()
            self._nccl = None
        mpi = self._mpi
        if not mpi_finalized() and self._mpi_comm not in (mpi.COMM_NULL, mpi.COMM_WORLD, mpi.COMM_SELF):
            self._mpi_comm.Free()

    close = free

    @property
    def closed(self) -> bool:
        """True once `free()` or `close()` ran."""
        return self._freed

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:  # an exception may have left the other ranks elsewhere: freeing then could hang
            self.free()

    def __repr__(self) -> str:
        if self._freed:
            return "Communicator(closed)"
        return f"Communicator(rank={self.rank}, size={self.size}, local_rank={self.local_rank})"

    # --- bookkeeping -------------------------------------------------------------------------
    def _adopt(self, sub: MpiComm) -> "Communicator":
        return self._track(Communicator(sub, clone=False, force_host_staging=self.force_host_staging,
                                        use_nccl="auto" if self.nccl_enabled else False))

    def _track(self, resource: Any) -> Any:
        resource._on_free = self._forget
        self._resources.append(resource)
        return resource

    def _forget(self, resource: Any) -> None:
        if resource in self._resources:
            self._resources.remove(resource)

    # --- how arrays reach MPI or NCCL -------------------------------------------------------
    def _shared(self, array: Array, op: Any = "sum") -> bool:
        """Whether this collective goes through the shared window (`share_memory`): alike on every rank."""
        return self._exchange is not None and self._exchange.takes(array, op)

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

    def _reduce_op(self, op: "str | MpiOp") -> MpiOp:
        if isinstance(op, self._mpi.Op):
            return op
        if op not in REDUCE_OP_NAMES:
            raise ValueError(f"unknown reduction {op!r}; use one of {sorted(REDUCE_OP_NAMES)} or an mpi4py MPI.Op")
        return getattr(self._mpi, REDUCE_OP_NAMES[op])


def mpi_comm_of(comm: "MpiComm | Communicator | None") -> MpiComm:
    """The mpi4py communicator behind `comm` (MPI.COMM_WORLD for None).

    Raises:
        TypeError: when `comm` is neither None, an mpi4py Comm nor a Communicator.
    """
    if isinstance(comm, Communicator):
        return comm.mpi_comm
    mpi = load_mpi()
    if comm is None:
        return mpi.COMM_WORLD
    if isinstance(comm, mpi.Comm):
        return comm
    raise TypeError(f"comm must be an mpi4py communicator, a Communicator or None, got {type(comm).__name__}")


def as_communicator(comm: "MpiComm | Communicator | None" = None) -> Communicator:
    """`comm` itself when it is a Communicator, else a new Communicator over a clone of it (or of COMM_WORLD)."""
    return comm if isinstance(comm, Communicator) else Communicator(comm)


def _check_array(array: Array, what: str) -> None:
    if not is_array(array):
        raise TypeError(f"{what} needs a numpy or cupy array, got {type(array).__name__}; "
                        "use numpy.asarray(value), or the *_object methods for Python objects")


def _describe(array: Array) -> str:
    return f"{array.size} {array.dtype}"
