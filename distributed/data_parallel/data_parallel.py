"""DataParallel: each rank backpropagates its shard; bucketed allreduces average the gradients."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from mpiprop.distributed.data_parallel.bucket_allreduce_mpi import MpiBucketAllreduce
from mpiprop.distributed.data_parallel.bucket_allreduce import BucketAllreduce
from mpiprop.distributed.data_parallel.shard_weights import ShardWeight
from mpiprop.distributed.data_parallel.buckets import DEFAULT_BUCKET_CAP_MB, GradientBucket, assign_buckets, bucket_size
from mpiprop.distributed.transport.communicator import Communicator, MpiComm, as_communicator
from mpiprop.distributed.reliability.consistency import check_same_model
from mpiprop.distributed.data_parallel.gradient_reducer import (GradientReducer, SyncStats,
                                                               shared_memory_bucket_allreduce)
from mpiprop.distributed.reliability.timeline import span
from mpiprop.network.backend import Array, device_of
from mpiprop.network.layer import REMEMBERED, Layer
from mpiprop.network.parameter import Parameter
from mpiprop.network.sequential import Sequential


class DataParallel:
    """Data-parallel training of `module` over the ranks of `comm`.

    Every rank holds a full replica and runs forward and backward on its own shard of the
    batch. At construction rank 0's parameters and buffers are broadcast, and each gradient
    is rebound to a view into a flat per-bucket buffer. `backward` walks the layers of a
    Sequential in reverse; as soon as the last gradient of a bucket is final, that bucket's
    non-blocking allreduce starts, so communication overlaps the rest of backward. When
    `backward` returns, every gradient is the gradient of the mean loss over the global batch
    when each rank's loss is the mean over its shard, even for shards of unequal sizes (4, 3
    and 3 rows): each training-mode forward learns every rank's rows (one small allreduce), and
    the next backward multiplies the output gradient by this rank's share of them, so the
    allreduces' sums are the row-weighted means. Gradients added to `.grad` outside `backward`
    are therefore summed over ranks, not averaged.

    Usage::

        dp = DataParallel(model)            # collective: all ranks construct together
        out = dp(x_local)
        loss_fn(out, y_local); dp.backward(loss_fn.backward())
        optimizer.step()                    # optimizer over dp.parameters()

    Args:
        module: the model (a Sequential gets overlapped communication; any other Layer has
            its buckets reduced after its whole backward).
        comm: an mpi4py communicator or Communicator; None clones MPI.COMM_WORLD.
        bucket_cap_mb: target size of a gradient bucket in MiB (default 4).
        compression: None, or "float16" to allreduce float16 copies of the gradient buffers
            (half the bytes, about 3 significant digits per averaged gradient).
        broadcast_buffers: broadcast rank 0's buffers (BatchNorm running statistics) before every
            training-mode forward, as PyTorch DDP does at each forward, and again in `eval()`, so
            all ranks evaluate alike, with the buffers a checkpoint written by rank 0 holds.
        shared_memory: when the gradients are numpy arrays, keep the buckets in memory the
            ranks of a node can read and sum them there (about twice as fast as MPI's
            allreduce; see mpiprop.distributed.data_parallel.bucket_allreduce_shared); ranks on
            several nodes then add the nodes' sums between one leader per node
            (bucket_allreduce_hierarchical). The window stays allocated until the process
            ends, as the gradients are views into it. False, a compression, GPU arrays or one
            rank per node use MPI's allreduce, and so does a node whose /dev/shm lacks room for
            the buckets (with a warning).

    Raises:
        TypeError: when `module` is not a network Layer.
        ValueError: on every rank, when ranks built models whose parameter or buffer names,
            shapes or dtypes differ; for a non-positive bucket size or unknown compression.
    """

    def __init__(self, module: Layer, comm: "MpiComm | Communicator | None" = None, *,
                 bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB, compression: str | None = None,
                 broadcast_buffers: bool = True, shared_memory: bool = True):
        if not isinstance(module, Layer):
            raise TypeError(f"DataParallel wraps a network Layer (e.g. a Sequential), got {type(module).__name__}")
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        self.module = module
        self.comm = as_communicator(comm)
        self.broadcast_buffers = bool(broadcast_buffers)
        try:
            check_same_model(module, self.comm)
        except ValueError:
            if self.comm is not comm:  # every rank raises, so freeing our clone is collective-safe
                self.comm.free()
            raise
        self._broadcast_state()
        self._final_params = _params_final_after_each_layer(module)
        ready_order = [p for layer_params in reversed(self._final_params) for p in layer_params]
        groups = assign_buckets(ready_order, int(bucket_cap_mb * 2**20))
        self.compression = compression
        shared = self._shared_memory_allreduce(groups, shared_memory)
        self.buckets = [GradientBucket(group, None if shared is None else shared.buffers[index])
                        for index, group in enumerate(groups)]
        allreduce = shared or MpiBucketAllreduce([bucket.buffer for bucket in self.buckets], self.comm, compression)
        self._reducer = GradientReducer(self.buckets, allreduce)
        self._sync_gradients = True
        self._shard_weight = ShardWeight(self.comm)
        self._last_cache: Any = REMEMBERED

    def _shared_memory_allreduce(self, groups: list[list[Parameter]],
                                 shared_memory: bool) -> BucketAllreduce | None:
        """Buckets in memory shared by each node's ranks, when asked for, uncompressed and possible."""
        if not (shared_memory and self.compression is None):
            return None
        on_cpu = all(device_of(group[0].data) == "cpu" for group in groups)
        return shared_memory_bucket_allreduce([bucket_size(group) for group in groups],
                                              [group[0].dtype for group in groups], self.comm, on_cpu)

    # --- forward and backward ------------------------------------------------------------
    def forward(self, x: Array) -> tuple[Array, Any]:
        """The module's forward on this rank's shard: (output, cache for `backward`).

        Collective in training mode: the ranks share their rows (and rank 0's buffers).
        """
        if self.module.training and self.broadcast_buffers:
            self.sync_buffers()
        if self.module.training and self.comm.size > 1:
            self._shard_weight.start(int(x.shape[0]))
        with span("forward"):
            return self.module.forward(x)

    def __call__(self, x: Array) -> Array:
        y, self._last_cache = self.forward(x)
        return y

    def backward(self, dout: Array, cache: Any = REMEMBERED, *, input_grad: bool = False) -> Array | None:
        """Backpropagate `dout` and return once every gradient is averaged over ranks.

        Collective (outside `no_sync()`): every rank must call it for the same number of steps.

        Args:
            dout: gradient of this rank's loss with respect to this rank's output.
            cache: from `forward`; defaults to the one remembered by the last `dp(x)`.
            input_grad: also compute and return the gradient with respect to the input (not averaged).

        Returns:
            The input gradient when `input_grad`, else None.
        """
        cache = self._take_cache(cache)
        weight = self._shard_weight.take()
        dout = dout if self.comm.size == 1 else dout * weight  # backward is linear: sums become weighted means
        if not self._sync_gradients:
            with span("backward", synchronised=False):
                input_gradient = self._run_backward(dout, cache, input_grad, on_layer_done=None)
        else:
            self._reducer.start()
            with span("backward"):
                input_gradient = self._run_backward(dout, cache, input_grad, on_layer_done=self._reducer.mark_ready)
            self._reducer.finish()
        if input_gradient is not None and self.comm.size > 1 and weight > 0:
            input_gradient *= input_gradient.dtype.type(1.0 / weight)
        return input_gradient

    @contextmanager
    def no_sync(self) -> Iterator[None]:
        """Within this context backward only accumulates local gradients; the first backward after
        it averages everything accumulated (gradient accumulation with one allreduce)."""
        previous, self._sync_gradients = self._sync_gradients, False
        try:
            yield
        finally:
            self._sync_gradients = previous

    @property
    def last_sync_stats(self) -> SyncStats:
        """Timings of the last synchronised backward (backward time, time waiting on allreduces)."""
        return self._reducer.last_stats

    def _run_backward(self, dout: Array, cache: Any, input_grad: bool, on_layer_done) -> Array | None:
        if not isinstance(self.module, Sequential):
            dx = self.module.backward(dout, cache)
            if on_layer_done is not None:
                on_layer_done([p for params in self._final_params for p in params])
            return dx if input_grad else None
        return self._run_sequential_backward(dout, cache, input_grad, on_layer_done)

    def _run_sequential_backward(self, dy: Array, cache: Any, input_grad: bool, on_layer_done) -> Array | None:
        layers = self.module.layers
        stop = 0 if input_grad else _first_layer_with_parameters(layers)
        for index in range(len(layers) - 1, stop - 1, -1):
            if index == stop and not input_grad:
                layers[index].backward_weight(dy, cache.caches[index])
                dy = None
            else:
                dy = layers[index].backward(dy, cache.caches[index])
            if on_layer_done is not None:
                on_layer_done(self._final_params[index])
        return dy if input_grad else None

    def _take_cache(self, cache: Any) -> Any:
        if cache is not REMEMBERED:
            return cache
        if self._last_cache is REMEMBERED:
            raise RuntimeError("DataParallel.backward was called without a cache and no forward is remembered; "
                               "call dp(x) first, or pass the cache returned by dp.forward(x)")
        cache, self._last_cache = self._last_cache, REMEMBERED
        return cache

    # --- state shared by all ranks -----------------------------------------------------------
    def sync_buffers(self) -> None:
        """Overwrite every rank's buffers (BatchNorm running statistics) with rank 0's. Collective."""
        for _, buffer in self.module.named_buffers():
            self.comm.bcast(buffer, root=0)

    def _broadcast_state(self) -> None:
        for p in _unique_parameters(self.module):
            self.comm.bcast(p.data, root=0)
        self.sync_buffers()

    # --- what a training loop expects of a model -----------------------------------------------
    def parameters(self) -> list[Parameter]:
        return self.module.parameters()

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        return self.module.named_parameters(prefix)

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        return self.module.named_buffers(prefix)

    def zero_grad(self) -> None:
        """Reset every gradient to zero (one fill per bucket buffer)."""
        for bucket in self.buckets:
            bucket.buffer.fill(0)

    @property
    def training(self) -> bool:
        return self.module.training

    def train(self, mode: bool = True) -> "DataParallel":
        """Set training (True) or evaluation mode; returns self.

        Switching to evaluation is collective with `broadcast_buffers`: every rank first takes rank
        0's buffers, since each rank's last training forward updated them from its own shard.
        """
        self.module.train(mode)
        if not mode and self.broadcast_buffers:
            self.sync_buffers()
        return self

    def eval(self) -> "DataParallel":
        return self.train(False)

    def state_dict(self) -> dict[str, Array]:
        """The module's state dict (identical on all ranks after each synchronised step)."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Load `state` into the module; call it on every rank with the same state."""
        self.module.load_state_dict(state)

    def to(self, device: str | None = None, dtype=None) -> "DataParallel":
        """Refused: moving would rebind the gradients away from their buckets.

        Raises:
            RuntimeError: always; move or cast the module before wrapping it.
        """
        raise RuntimeError("DataParallel cannot move or cast a wrapped model; call module.to(...) "
                           "before DataParallel(module)")

    @property
    def allreduce_kind(self) -> str:
        """"shared memory" (one node), "hierarchical" (several nodes) or "mpi" (MPI's allreduce)."""
        return self._reducer.allreduce.kind

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    def __repr__(self) -> str:
        return (f"DataParallel(ranks={self.comm.size}, buckets={len(self.buckets)}, "
                f"allreduce={self.allreduce_kind!r}, compression={self.compression!r},\n  module={self.module!r})")


def _unique_parameters(module: Layer) -> list[Parameter]:
    seen: dict[int, Parameter] = {}
    for p in module.parameters():
        seen.setdefault(id(p), p)
    return list(seen.values())


def _params_final_after_each_layer(module: Layer) -> list[list[Parameter]]:
    """For each top-level layer, the parameters whose gradient is final once its backward ran.

    Backward visits layers last to first, so a parameter shared by several layers is final
    after the first of them. A module that is not a Sequential counts as one layer.
    """
    layers = module.layers if isinstance(module, Sequential) else [module]
    first_owner: dict[int, int] = {}
    for index in range(len(layers) - 1, -1, -1):
        for p in layers[index].parameters():
            first_owner[id(p)] = index
    final: list[list[Parameter]] = [[] for _ in layers]
    for p in _unique_parameters(module):
        final[first_owner[id(p)]].append(p)
    return [list(reversed(params)) for params in final]


def _first_layer_with_parameters(layers: list[Layer]) -> int:
    for index, layer in enumerate(layers):
        if layer.parameters():
            return index
    return len(layers)
