"""DataParallel: each rank backpropagates its shard; bucketed allreduces average the gradients."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

from mpiprop.distributed.data_parallel.buckets import DEFAULT_BUCKET_CAP_MB
from mpiprop.distributed.data_parallel.compression import NoCompression
from mpiprop.distributed.data_parallel.data_parallel_ranks import DataParallelRanks
from mpiprop.distributed.data_parallel.gradient_sync import GradientSync, SyncStats
from mpiprop.distributed.data_parallel.parameter_shards import shard_owners
from mpiprop.distributed.data_parallel.sharded_optimizer import ShardedOptimizer
from mpiprop.distributed.data_parallel.sharded_parameters import ShardedParameters
from mpiprop.distributed.data_parallel.shard_weights import ShardWeight, loss_gradient_and_denominator
from mpiprop.distributed.reliability.consistency import check_same_model
from mpiprop.distributed.reliability.timeline import span
from mpiprop.distributed.reliability.wrapped_backward import WrappedBackward
from mpiprop.distributed.tensor_parallel.named_shares import tensor_group_of
from mpiprop.distributed.reliability.job_guards import start
from mpiprop.distributed.transport.closing import ReleasesCommunicator
from mpiprop.distributed.transport.communicator import Communicator, MpiComm
from mpiprop.network.backend import Array
from mpiprop.network.compute import rng
from mpiprop.network.layers.dropout import Dropout
from mpiprop.network.layers.layer import REMEMBERED, Layer
from mpiprop.network.layers.losses import Loss
from mpiprop.network.training.whole_model import WholeModelStrategy
from mpiprop.network.optim.optimizer import Optimizer, ParamsOrGroups
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.layers.sequential import Sequential


_NO_SHARDED_OPTIMIZER = (
    "DataParallel(shard_optimizer_state={}) shards the optimizer state only in an optimizer made by "
    "dp.optimizer(nn.optim.Adam, lr=...): a step has passed without one, so an optimizer over dp.parameters() "
    "(e.g. nn.optim.Adam(dp.parameters())) keeps the whole state on every rank, and under ZeRO-2 it steps with "
    "the zeros that stand in for the gradients other ranks own; build it with dp.optimizer(...)")


class DataParallel(WholeModelStrategy, ReleasesCommunicator):
    """Data-parallel training of `module` over the ranks of `comm`.

    Every rank holds a full replica and runs forward and backward on its own shard of the
    batch. At construction rank 0's parameters and buffers are broadcast, and each gradient
    is rebound to a view into a flat per-bucket buffer (a `GradientSync`). `backward` runs the
    Sequential's backward with a hook: as soon as the last gradient of a bucket is final, that
    bucket's non-blocking allreduce starts, so communication overlaps the rest of backward. When
    `backward` returns, every gradient is the gradient of the mean loss over the global batch
    when each rank's loss is the mean over its shard, even for shards of unequal sizes (4, 3
    and 3 rows): each rank passes its share of the global batch to the `GradientSync`, which
    weighs its buckets by it before summing them (see ShardWeight). `train_step` takes that share
    from the loss's denominator (`Loss.denominator`: rows, elements, or the total class weight of
    the kept targets, from the targets), so every loss option (class weights, ignore_index) gives torch's mean over
    the global batch, and returns that mean; `backward` alone counts the rows of the last forward.
    The shares are summed over the ranks in one small non-blocking allreduce per step. Under
    `no_sync()` each backward weighs its output gradient by its share instead, and the first
    synchronised backward after it sums with weight 1. Gradients added to `.grad` outside `backward`
    are weighted with the others.
    Switching to evaluation (`eval()`) gives every rank rank 0's buffers, so all ranks
    evaluate alike.

    Usage::

        dp = DataParallel(model)            # collective: all ranks construct together
        out = dp(x_local)
        loss_fn(out, y_local); dp.backward(loss_fn.backward())
        optimizer.step()                    # optimizer over dp.parameters()

    or, with the training-step contract every strategy shares (and the Trainer uses)::

        loss = dp.train_step(x_local, y_local, loss_fn)

    Its model half comes from `WholeModelStrategy` (every rank holds the whole model); what is
    about ranks is `dp.ranks`, a `DataParallelRanks` (rank 0 prints and writes, rank r reads shard r).

    Args:
        module: the model (a Sequential gets overlapped communication; any other Layer has
            its buckets reduced after its whole backward).
        comm: an mpi4py communicator or Communicator, of which it works on a clone; None: MPI.COMM_WORLD.
            The first DataParallel, Pipeline or tensor-parallel group starts the job's guards
            (`mpiprop.distributed.start`). `close()` it, or build it in a `with` block, to release its
            communicators and shared memory.
        bucket_cap_mb: target size of a gradient bucket in MiB (default 4).
        compression: a compression object (`NoCompression()`, `Float16Compression()`: float16 copies
            of the gradient buffers, half the bytes, about 3 significant digits per averaged
            gradient), None for none, or the name "float16" (see compression.py).
        broadcast_buffers: broadcast rank 0's buffers (BatchNorm running statistics) before every
            training-mode forward, as PyTorch DDP does, so all ranks evaluate alike.
        shared_memory: when every rank is on one node and the gradients are numpy arrays,
            keep the buckets in memory all ranks can read and sum them there (about twice
            as fast as MPI's allreduce; see mpiprop.distributed.data_parallel.bucket_allreduce_shared). The window
            stays allocated until `close()`, as the gradients are views into it.
            False, a compression, GPU arrays or ranks on several nodes use MPI's allreduce,
            and so does a node whose /dev/shm lacks room for the buckets (with a warning).
            Under ZeRO-2 it chooses how the gradients are reduce-scattered (in a ring of shared
            slots on one node, else with MPI) and how the sharded optimizer hands the updated
            parameters over.
        shard_optimizer_state: 0 (every rank keeps the whole optimizer state); 1 (ZeRO-1: each
            rank keeps the state of its own 1/N of the parameters, whole parameters split in the
            buckets' order, see `shard_owners`; gradients averaged as above); 2 (ZeRO-2: as 1,
            and each bucket is reduce-scattered, so a rank receives the averaged gradients of its
            own parameters only and keeps only those between steps, about 1/N of the gradient
            memory; the others' gradients read as zero and hold no memory. A bucket is whole only
            from backward's first write into it until its reduce-scatter completes: on one node
            with `shared_memory`, in one of three bucket-sized slots per rank of a window shared by
            the node's ranks (kept until `close()`) and summed there; else with MPI, at most two
            reduce-scattering at once. Under `no_sync()` the buckets backward writes stay whole, in
            memory of their own, until the synchronised backward. No compression). Both need numpy
            parameters.
            Build the optimizer with `dp.optimizer(nn.optim.Adam, lr=...)`.

    Raises:
        TypeError: when `module` is not a network Layer.
        ValueError: on every rank, when ranks built models whose parameter or buffer names,
            shapes or dtypes differ; for a non-positive bucket size, an unknown compression or
            an unknown `shard_optimizer_state`, or a compression with `shard_optimizer_state=2`; on every
            rank, when the ranks passed different settings above or built different layers (types, settings).
        RuntimeError: later, when the wrapped model's own `backward` is called (its gradients would not be
            averaged: call `dp.backward`), or when ZeRO trains a second step without `dp.optimizer(...)`.
    """

    def __init__(self, module: Layer, comm: "MpiComm | Communicator | None" = None, *,
                 bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB, compression: "NoCompression | str | None" = None,
                 broadcast_buffers: bool = True, shared_memory: bool = True, shard_optimizer_state: int = 0):
        super().__init__(module)
        if not bucket_cap_mb > 0:
            raise ValueError(f"bucket_cap_mb must be > 0, got {bucket_cap_mb}")
        if shard_optimizer_state not in (0, 1, 2):
            raise ValueError(f"shard_optimizer_state must be 0 (none), 1 (ZeRO-1: optimizer state) or 2 (ZeRO-2: "
                             f"optimizer state and gradients), got {shard_optimizer_state!r}")
        if tensor_group_of(module) is not None:
            raise ValueError("DataParallel keeps a whole model per rank, but this one holds tensor-parallel layers; "
                             "train data x tensor-parallel layouts with Pipeline(model, micro_batches, stages=1), "
                             "which places the groups and joins their shares in checkpoints")
        self.shard_optimizer_state = shard_optimizer_state
        start()
        self.comm = Communicator(comm)
        self.ranks = DataParallelRanks(self.comm, gradient_shards=shard_optimizer_state == 2)
        self.broadcast_buffers = bool(broadcast_buffers)
        try:
            check_same_model(module, self.comm, settings={
                "bucket_cap_mb": bucket_cap_mb, "compression": compression, "broadcast_buffers": broadcast_buffers,
                "shared_memory": shared_memory, "shard_optimizer_state": shard_optimizer_state})
        except ValueError:
            if self.comm is not comm:  # every rank raises, so freeing our clone is collective-safe
                self.comm.free()
            raise
        self._broadcast_state()
        in_final_order = _parameters_in_final_order(module)
        owners = shard_owners([p.size for p in in_final_order], self.comm.size)
        self.owner_of = {id(p): owner for p, owner in zip(in_final_order, owners)}
        self.gradient_sync = GradientSync(in_final_order, self.comm, bucket_cap_mb=bucket_cap_mb,
                                          compression=compression, shared_memory=shared_memory,
                                          owners=owners if shard_optimizer_state == 2 else None)
        self.compression = self.gradient_sync.compression
        self.buckets = self.gradient_sync.buckets
        self._parameters_in_shared_memory = self.allreduce_kind.startswith("shared memory")
        self._sync_gradients = True
        self._accumulated_without_sync = False
        self._shard_weight = ShardWeight(self.comm)
        self._count_rows = True
        self._global_loss = math.nan
        self._has_buffers = any(True for _ in module.named_buffers())
        self._draws_dropout = any(isinstance(layer, Dropout) and layer.p > 0 for layer in module.descendants())
        self._own_backward = WrappedBackward(module, "DataParallel", "dp.backward(dout)")
        self._sharded_optimizer_made, self._training_forwards = False, 0

    # --- forward and backward ------------------------------------------------------------
    def forward(self, x: Array) -> tuple[Array, Any]:
        """The module's forward on this rank's shard: (output, cache for `backward`).

        Collective in training mode: the ranks share rank 0's buffers, and their rows when those are not
        summed with the gradients.
        """
        self._before_forward(x)
        with span("forward"), self._rows_of_the_global_batch(x):
            return self.module.forward(x)

    def __call__(self, x: Array) -> Array:
        self._before_forward(x)
        with span("forward"), self._rows_of_the_global_batch(x):
            return self.module(x)

    @contextmanager
    def _rows_of_the_global_batch(self, x: Array) -> Iterator[None]:
        """With dropout in training: this rank's rows draw the masks one process draws for them in the global batch."""
        if not (self._draws_dropout and self.module.training and self.comm.size > 1):
            yield
            return
        rows = self.comm.allgather_object(int(x.shape[0]))
        with rng.row_window(sum(rows[:self.comm.rank]), sum(rows)):
            yield

    def _before_forward(self, x: Array) -> None:
        if self.module.training:
            self._training_forwards += 1
            if self.shard_optimizer_state and self._training_forwards == 2 and not self._sharded_optimizer_made:
                raise RuntimeError(_NO_SHARDED_OPTIMIZER.format(self.shard_optimizer_state))
        if self.module.training and self.broadcast_buffers and self._has_buffers:
            self.sync_buffers()
        if self.module.training and self.comm.size > 1 and self._count_rows:
            self._shard_weight.start(int(x.shape[0]), rows=True)

    def train_step(self, x: Array, y: Array, loss_fn: Loss) -> float:
        """Forward, the loss and backward of this rank's shard; the gradients and the returned loss are those
        of the loss over the global batch (each rank weighted by its share of the loss's denominator).

        A NaN or Inf output or loss turns every rank's gradients and loss NaN; all-ignored targets add nothing.

        Args:
            x: this rank's shard of the batch.
            y: its targets.
            loss_fn: a loss reducing by "mean" (or "sum": the losses then add up over the ranks).

        Returns:
            The loss over the global batch, the same on every rank.
        """
        self._count_rows = False
        try:
            output = self(x)
        finally:
            self._count_rows = True
        value, output_grad, local = loss_gradient_and_denominator(loss_fn, output, y)
        if self.comm.size > 1:
            self._shard_weight.start(local, value, mean=loss_fn.reduction != "sum")
        self.backward(output_grad)
        self.last_output = output
        return self._global_loss if self.comm.size > 1 else value

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
        weight, self._global_loss = self._shard_weight.take() if self.comm.size > 1 else (1.0, math.nan)
        if not self._sync_gradients or self._accumulated_without_sync:
            return self._backward_accumulating(dout, cache, input_grad, weight)
        self.gradient_sync.start(weight)
        with span("backward"):
            input_gradient = self._run_backward(dout, cache, input_grad, self.gradient_sync.mark_final)
        self.gradient_sync.finish()
        return input_gradient

    def _backward_accumulating(self, dout: Array, cache: Any, input_grad: bool, weight: float) -> Array | None:
        """A backward under `no_sync()`, or the first synchronised one after: gradients from several backwards
        share the buckets, so each weighs its output gradient by its own share, and the sum has weight 1."""
        weighted = dout if weight == 1.0 else dout * dout.dtype.type(weight)
        if not self._sync_gradients:
            with span("backward", synchronised=False):
                input_gradient = self._run_backward(weighted, cache, input_grad, on_parameters_final=None)
            self._accumulated_without_sync = True
        else:
            self.gradient_sync.start(1.0)
            with span("backward"):
                input_gradient = self._run_backward(weighted, cache, input_grad, self.gradient_sync.mark_final)
            self.gradient_sync.finish()
            self._accumulated_without_sync = False
        if input_gradient is not None and weight != 1.0 and weight > 0:
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
        return self.gradient_sync.last_stats

    def _run_backward(self, dout: Array, cache: Any, input_grad: bool, on_parameters_final) -> Array | None:
        with self._own_backward.allowed():
            return self._run_module_backward(dout, cache, input_grad, on_parameters_final)

    def _run_module_backward(self, dout: Array, cache: Any, input_grad: bool, on_parameters_final) -> Array | None:
        written = self.gradient_sync.mark_written
        if isinstance(self.module, Sequential):
            return self.module.backward(dout, cache, input_grad=input_grad, on_parameters_final=on_parameters_final,
                                        on_parameters_written=written)
        written(self.module.parameters())
        dx = self.module.backward(dout, self.module._cache_or_last(cache))
        if on_parameters_final is not None:
            on_parameters_final(self.module.parameters())
        return dx if input_grad else None

    def parameters(self) -> list[Parameter]:
        """The parameters; under ZeRO-2 a `ShardedParameters`, whose clip_grad_norm_ spans every rank's share."""
        params = super().parameters()
        return ShardedParameters(params, self.comm) if self.shard_optimizer_state == 2 else params

    # --- the optimizer ---------------------------------------------------------------------
    def optimizer(self, optimizer_class: type[Optimizer], params: ParamsOrGroups | None = None,
                  **hyperparameters: Any) -> "Optimizer | ShardedOptimizer":
        """The optimizer for this model: sharded with `shard_optimizer_state`, else the plain one.

        Args:
            optimizer_class: e.g. `nn.optim.Adam`.
            params: parameters or parameter groups of this model; None for all of them.
            hyperparameters: the class's keyword arguments, e.g. `lr=1e-3, weight_decay=0.01`.

        Returns:
            `optimizer_class(params, **hyperparameters)`, or a `ShardedOptimizer` of it (which
            shares the updated parameters in shared memory where the gradients are summed there, or,
            under ZeRO-2, where every rank is on one node and `shared_memory` is True).
        """
        params = self.parameters() if params is None else params
        if not self.shard_optimizer_state:
            return optimizer_class(params, **hyperparameters)
        self._sharded_optimizer_made = True
        return ShardedOptimizer(optimizer_class, params, self.comm, self.owner_of,
                                [bucket.params for bucket in self.buckets],
                                shared_memory=self._parameters_in_shared_memory, **hyperparameters)

    # --- state shared by all ranks -----------------------------------------------------------
    def sync_buffers(self) -> None:
        """Overwrite every rank's buffers (BatchNorm running statistics) with rank 0's. Collective."""
        for _, buffer in self.module.named_buffers():
            self.comm.bcast(buffer, root=0)

    def _broadcast_state(self) -> None:
        for p in self.module.parameters():
            self.comm.bcast(p.data, root=0)
        self.sync_buffers()

    # --- what a training loop expects of a model -----------------------------------------------
    def zero_grad(self) -> None:
        """Reset every gradient to zero (one fill per bucket buffer)."""
        self.gradient_sync.zero_grad()

    def train(self, mode: bool = True) -> "DataParallel":
        """Set training (True) or evaluation mode; returns self.

        Switching to evaluation is collective with `broadcast_buffers`: every rank first takes rank
        0's buffers, since each rank's last training forward updated them from its own shard.
        """
        self.module.train(mode)
        if not mode and self.broadcast_buffers:
            self.sync_buffers()
        return self

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
        return self.gradient_sync.allreduce_kind

    # --- the strategy's place among the ranks, as `self.ranks` says it ---------------------------
    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def size(self) -> int:
        return self.ranks.size

    @property
    def data_shard(self) -> tuple[int, int]:
        return self.ranks.data_shard

    @property
    def is_main(self) -> bool:
        return self.ranks.is_main

    @property
    def position(self) -> str:
        return self.ranks.position

    def __repr__(self) -> str:
        return (f"DataParallel(ranks={self.comm.size}, buckets={len(self.buckets)}, "
                f"allreduce={self.allreduce_kind!r}, compression={self.compression!r},\n  module={self.module!r})")


def _parameters_in_final_order(module: Layer) -> list[Parameter]:
    """The parameters in the order backward completes their gradients (a non-Sequential: all at the end)."""
    if not isinstance(module, Sequential):
        return list(reversed(module.parameters()))
    return [p for layer_params in reversed(module.parameters_final_after_each_layer()) for p in layer_params]
