"""Pipeline: a Sequential cut into stages over MPI ranks, trained with a micro-batch schedule."""
from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy

from mpiprop.distributed.data_parallel.buckets import DEFAULT_BUCKET_CAP_MB
from mpiprop.distributed.pipeline.micro_batches import BatchPlan
from mpiprop.distributed.pipeline.non_finite_search import first_non_finite_stage_layer
from mpiprop.distributed.pipeline.partition import layer_ranges
from mpiprop.distributed.pipeline.pipeline_batches import agree_on_batch, joined, loss_weights, shared_loss
from mpiprop.distributed.pipeline.pipeline_comms import join_ranks
from mpiprop.distributed.pipeline.pipeline_ranks import PipelineRanks
from mpiprop.distributed.pipeline.pipeline_replicas import finish_replica_step, replica_gradient_sync
from mpiprop.distributed.pipeline.pipeline_schedules import Step, forward_only
from mpiprop.distributed.pipeline.pipeline_setup import receive_parameters_from_rank_zero, resolve_balance
from mpiprop.distributed.pipeline.pipeline_state import (in_layer_order, join_over_stages, load_chunks,
                                                         named_chunk_buffers, named_chunk_parameters,
                                                         whole_state_shapes)
from mpiprop.distributed.pipeline.pipeline_stats import StageStats
from mpiprop.distributed.pipeline.schedule_registry import schedule_spec
from mpiprop.distributed.pipeline.schedule_simulation import check_schedule, simulate
from mpiprop.distributed.pipeline.stage import RunResult, StageExecutor
from mpiprop.distributed.pipeline.tensor_group import agree_within_tensor_group, check_draws_alike, rows_between_stages
from mpiprop.distributed.pipeline.tied_parameters import TiedParameters
from mpiprop.distributed.reliability.consistency import check_same_model
from mpiprop.distributed.reliability.job_guards import start
from mpiprop.distributed.reliability.waits import waiting_in
from mpiprop.distributed.tensor_parallel.named_shares import named_splits, share_of, tensor_group_of
from mpiprop.distributed.transport.closing import ReleasesCommunicator
from mpiprop.distributed.transport.communicator import Communicator, MpiComm
from mpiprop.network.backend import Array, to_numpy
from mpiprop.network.checks import positive_int
from mpiprop.network.layers.losses import Loss
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.layers.sequential import Sequential


class Pipeline(ReleasesCommunicator):
    """Pipeline parallelism: the layers of `model` split across the ranks of `comm`, in rank order.

    Every rank constructs the same `model` (as for data parallelism); each rank then keeps
    and trains only its stage, a slice sharing the model's layers, after receiving rank 0's
    values for it. A batch is cut into `micro_batches` micro-batches that flow through
    the stages: activations go forward and gradients back in non-blocking point-to-point
    messages, in the order `schedule` prescribes.

    With `stages` smaller than the number of ranks, the ranks form a grid of pipelines
    (see `make_grid`): each pipeline trains on its share of every batch (`data_shard`), and
    every stage's gradients are averaged over its replicas with the same bucketed
    `GradientSync` as DataParallel (in shared memory on one node): a bucket's reduction starts
    during the chunk's last backward of the batch, once its gradients are final.

    When `model` holds tensor-parallel layers (`ColumnParallelLinear`, `RowParallelLinear`)
    split over groups of T consecutive ranks (`tensor_parallel_group(T)`), each stage is
    held by such a group: the ranks form replicas x stages x T (a 3-D layout, see
    `make_grid`). Every tensor rank runs its own line of the pipeline; the split layers
    exchange within the group. Checkpoints and `state_shapes` hold the whole model's arrays,
    joined from the shares; `load_state_dict` cuts each rank's share from whole arrays.

    Usage (the same on every rank)::

        pipe = Pipeline(model, micro_batches=8, schedule="1f1b")
        optimizer = nn.optim.SGD(pipe.parameters(), lr=0.1)
        optimizer.zero_grad()
        loss = pipe.train_step(x, y, loss_fn)     # x read on the first stage, y on the last
        optimizer.step()

    It implements the training-step contract of `nn.LocalStrategy`, so `nn.Trainer(pipe, ...)`
    trains it; `state_dict()` holds this rank's entries under the whole model's names.

    Args:
        model: the whole model, identical on every rank.
        micro_batches: micro-batches per batch. A batch whose size it does not divide is cut
            into micro-batches one row apart in size, weighted so the loss and gradients are
            still exactly the batch mean's (for losses that average over rows).
        schedule: "gpipe", "1f1b", "interleaved" (several chunks per rank) or "zb-h1"
            (zero-bubble: backward split into input- and weight-gradient steps).
        balance: layers per stage, e.g. [3, 4] (per chunk, in virtual-stage order, for
            "interleaved"); None or "parameters" balances the parameter count; "time"
            balances forward+backward time measured on `sample_input` on rank 0.
        comm: an mpi4py communicator or Communicator whose ranks are the stages (or, with
            `stages`, the grid); None uses all of MPI.COMM_WORLD. The pipeline works on a private clone of it,
            released by `close()` or at the end of a `with` block (with its shared memory).
        virtual_stages: model chunks per rank; default: the schedule's (2 for "interleaved", else 1).
        sample_input: one micro-batch of input, needed on rank 0 when `balance="time"`.
        stages: stages per pipeline; stages x T must divide the number of ranks; None: all of
            them (divided by T with tensor-parallel layers).
        bucket_cap_mb, shared_memory: of the replicas' gradient buckets, as for DataParallel.

    Raises:
        TypeError: when `model` is not a Sequential.
        ValueError: on every rank, for an unknown schedule or balance rule, a balance that
            does not fit the model, fewer layers than stages, micro-batch counts the schedule
            cannot use, `stages` that does not divide the ranks, ranks that built different models,
            or tensor-parallel layers whose group is not T consecutive ranks of `comm`.
    """

    def __init__(self, model: Sequential, micro_batches: int, schedule: str = "1f1b",
                 balance: Sequence[int] | str | None = None, comm: "MpiComm | Communicator | None" = None, *,
                 virtual_stages: int | None = None, sample_input: Array | None = None, stages: int | None = None,
                 bucket_cap_mb: float = DEFAULT_BUCKET_CAP_MB, shared_memory: bool = True):
        if not isinstance(model, Sequential):
            raise TypeError(f"Pipeline splits a network Sequential, got {type(model).__name__}; "
                            "wrap the layers in nn.Sequential(...)")
        spec = schedule_spec(schedule)
        start()
        self.micro_batches = positive_int(micro_batches, "micro_batches")
        self.schedule_name = schedule
        self.virtual_stages = spec.virtual_stages(virtual_stages)
        self.last_output: Array | None = None
        self.ranks = PipelineRanks(self)
        self.splits = named_splits(model)
        agreed = Communicator(comm)
        try:
            check_same_model(model, agreed, "Pipeline", settings={
                "micro_batches": micro_batches, "schedule": schedule, "virtual_stages": self.virtual_stages,
                "balance": balance, "stages": stages, "bucket_cap_mb": bucket_cap_mb, "shared_memory": shared_memory})
            comms = join_ranks(agreed, stages, tensor_group_of(model))
        finally:
            agreed.free()
        self.comm, self.pipeline_comm, self.model_comm = comms.comm, comms.pipeline_comm, comms.model_comm
        self.data_comm, self.replica, self.replicas = comms.data_comm, comms.replica, comms.replicas
        self.tensor_comm, self.tensor_rank, self.tensor_size = comms.tensor_comm, comms.tensor_rank, comms.tensor_size
        self.stage_index, self.num_stages = self.pipeline_comm.rank, self.pipeline_comm.size
        self.schedule = spec.build(self.num_stages, self.micro_batches, self.virtual_stages)
        self.balance = resolve_balance(model, balance, sample_input, self.num_stages * self.virtual_stages,
                                       self.comm, tensor_parallel=self.tensor_comm is not None)
        all_ranges = layer_ranges(self.balance)
        self.chunk_ranges = [all_ranges[c * self.num_stages + self.stage_index] for c in range(self.virtual_stages)]
        self.chunks = [model[start:stop] for start, stop in self.chunk_ranges]
        self.chunk_first_layers = [len(list(model[:start].children())) for start, _ in self.chunk_ranges]
        self._state_shapes = whole_state_shapes(model, self.splits)
        receive_parameters_from_rank_zero(model, all_ranges, self.pipeline_comm)
        self.tied = TiedParameters(model, all_ranges, self.pipeline_comm)
        if self.tensor_comm is not None:
            agree_within_tensor_group([*self.named_parameters(), *self.named_buffers()], self.splits, self.tensor_comm)
        check_schedule(self.schedule, self.micro_batches, self.virtual_stages)
        simulate(self.schedule)  # raises ScheduleDeadlock if the step order could ever hang
        self.steps: list[Step] = self.schedule[self.stage_index]
        self._executor = StageExecutor(self.chunks, self.pipeline_comm, rows_between_stages(model, self.tensor_comm))
        self.gradient_sync = None if self.data_comm is None else replica_gradient_sync(
            self.chunks, self.parameters(), [buffer for _, buffer in self.named_buffers()], self.data_comm,
            bucket_cap_mb, shared_memory)
        self.last_stats: StageStats | None = None
        self._tensor_draws_checked = self.tensor_comm is None
        self._output_split = getattr(model[len(model) - 1], "splits_output", False)

    # --- where this rank stands ---------------------------------------------------------------
    @property
    def is_first(self) -> bool:
        """Whether this rank reads the input (it holds virtual stage 0)."""
        return self.stage_index == 0

    @property
    def is_last(self) -> bool:
        """Whether this rank computes the loss (it holds the last virtual stage)."""
        return self.stage_index == self.num_stages - 1

    # --- training, evaluation, prediction -------------------------------------------------------
    def train_step(self, x: Array | None, y: Array | None, loss_fn: Loss) -> float:
        """Forward and backward of one batch through the pipeline; collective over the stages.

        Gradients are added to each local parameter's `.grad` (zero them first, as before a
        plain backward); afterwards they equal the whole model's gradients for the batch
        (with replicas, each of which passes its share of the batch: the gradients over the whole batch,
        each micro-batch weighted by its share of the loss's denominator summed over the replicas, so
        ignored targets and class weights give torch's mean over the whole batch).
        On the last stage `last_output` holds the batch's output (on its first tensor rank only, so
        that each output is counted once).
        Layers see one micro-batch at a time, as in torch's pipelining: dropout draws each
        micro-batch's rows of the whole batch's masks (numpy arrays), but BatchNorm normalises each
        micro-batch with its own statistics and updates its running statistics once per
        micro-batch, so with BatchNorm the gradients are those of the micro-batches' losses
        weighted by their share of the rows, each run through the model on its own.

        Args:
            x: the input batch on the first stage (ignored elsewhere; pass None).
            y: the targets on the last stage (ignored elsewhere; pass None).
            loss_fn: a mean-reducing loss such as nn.CrossEntropyLoss().

        Returns:
            the batch's mean loss (over every replica's share), on every rank.

        Raises:
            ValueError: on every rank, when x or y is missing or their sizes do not fit.
        """
        plan = self._agree_on_batch(x, y, needs_targets=True)
        if not self._tensor_draws_checked:
            self._tensor_draws_checked = True
            check_draws_alike(self.chunks, self.tensor_comm, self.stage_index)
        weights = loss_weights(plan, y, loss_fn, self.data_comm) if self.is_last else None
        sync = self.gradient_sync
        if sync is not None:
            sync.start(1.0)  # each micro-batch's loss already counts with its share of every replica's denominator
        result = self._executor.run(self.steps, plan, x, y, loss_fn, keep_outputs=self._reports_outputs,
                                    on_parameters_final=None if sync is None else sync.mark_final, weights=weights)
        loss = self._finish(result)
        if sync is not None:
            loss = finish_replica_step(sync, [buffer for _, buffer in self.named_buffers()], self.data_comm, loss)
        # after the replicas' sum (the two commute), so no rank waits on the tied stages inside a replica sync
        self.tied.sum_gradients()
        self.last_output = joined(result.outputs)
        return loss

    def evaluate(self, x: Array | None, y: Array | None, loss_fn: Loss) -> float:
        """The mean loss of a batch without gradients; collective. Call `eval()` first for eval mode.

        Args and raises as for `train_step`.
        """
        plan = self._agree_on_batch(x, y, needs_targets=True, forward_only_run=True)
        schedule = forward_only(self.num_stages, len(plan.sizes), self.virtual_stages)
        weights = loss_weights(plan, y, loss_fn, None) if self.is_last else None
        result = self._executor.run(schedule[self.stage_index], plan, x, y, loss_fn, weights=weights)
        return self._finish(result)

    def predict(self, x: Array | None) -> Array | None:
        """The model's output for a batch; collective.

        Args:
            x: the input batch on the first stage (None elsewhere).

        Returns:
            the output on the last stage (its first tensor rank), None on the other ranks.
        """
        plan = self._agree_on_batch(x, None, needs_targets=False, forward_only_run=True)
        schedule = forward_only(self.num_stages, len(plan.sizes), self.virtual_stages)
        result = self._executor.run(schedule[self.stage_index], plan, x, keep_outputs=self._reports_outputs)
        self._finish(result)
        return joined(result.outputs)

    @property
    def _reports_outputs(self) -> bool:
        """The last stage's first tensor rank reports the output, or each of them its share when the model's
        last layer splits its output (a vocabulary-parallel head: each rank's shard of the logits, which
        a vocabulary-parallel loss takes on every tensor rank)."""
        return self.is_last and (self.tensor_rank == 0 or self._output_split)

    def _agree_on_batch(self, x: Array | None, y: Array | None, needs_targets: bool,
                        forward_only_run: bool = False) -> BatchPlan:
        return agree_on_batch(self.pipeline_comm, x, y, self.is_first, self.is_last, self.micro_batches,
                              needs_targets, forward_only_run)

    def _finish(self, result: RunResult) -> float:
        """Share the last stage's loss with every rank and keep the run's timeline as `last_stats`."""
        loss = shared_loss(self.pipeline_comm, result)
        self.last_stats = result.stats
        return loss

    def gather_stats(self) -> list[StageStats]:
        """Every rank's timeline of the last batch (bubble fraction, peak stash), on every rank; collective."""
        return self.pipeline_comm.allgather_object(self.last_stats)

    # --- parameters and state ---------------------------------------------------------------------
    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """This rank's parameters under their names in the whole model, e.g. ("4.weight", p).

        A copy of a parameter tied to an earlier stage (the GPT's head, tied to the first stage's embedding)
        comes first under that stage's name, then under its own, as one process lists a tied weight.
        """
        return named_chunk_parameters(self.chunks, self.chunk_first_layers, self.tied, prefix)

    def parameters(self) -> list[Parameter]:
        """This rank's parameters, each once (give them to the optimizer)."""
        return list({id(p): p for _, p in self.named_parameters()}.values())

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Array]]:
        """This rank's buffers (e.g. BatchNorm statistics) under their whole-model names."""
        return named_chunk_buffers(self.chunks, self.chunk_first_layers, prefix)

    def state_dict(self) -> dict[str, Array]:
        """Copies of this rank's parameters and buffers (its shares of split ones), keyed by whole-model name."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update({name: b.copy() for name, b in self.named_buffers()})
        return state

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of every entry of the whole model's state dict (every stage's)."""
        return dict(self._state_shapes)

    def consolidated_state_dict(self) -> dict[str, Any] | None:
        """The whole model's state dict (numpy arrays) on rank 0, None elsewhere; collective.

        It loads into the plain Sequential with `model.load_state_dict(state)`.
        """
        merged = self.merge_over_stages({name: to_numpy(array) for name, array in self.state_dict().items()})
        if merged is None:
            return None
        return in_layer_order(merged)

    def load_state_dict(self, state: dict[str, Array]) -> None:
        """Load this rank's entries of a whole-model state dict (from a checkpoint of any layout).

        Raises:
            KeyError: when an entry of a local layer is missing or unexpected.
            ValueError: when a shape differs.
        """
        load_chunks(self.chunks, self.chunk_first_layers, self.local_part(state))

    def local_part(self, named: dict[str, Any]) -> dict[str, Any]:
        """`named` (whole-model values keyed by parameter name) with split entries cut to this rank's shares."""
        if self.tensor_comm is None:
            return named
        return share_of(named, self.splits, self.tensor_rank)

    def zero_grad(self) -> None:
        """Reset this rank's gradients to zero."""
        for p in self.parameters():
            p.zero_grad()

    @property
    def training(self) -> bool:
        return self.chunks[0].training

    def train(self, mode: bool = True) -> "Pipeline":
        """Set training mode on this rank's layers (call on every rank); returns self."""
        for chunk in self.chunks:
            chunk.train(mode)
        return self

    def eval(self) -> "Pipeline":
        """Evaluation mode (dropout off, BatchNorm running statistics); returns self."""
        return self.train(False)

    # --- the strategy's place among the ranks -------------------------------------------------------
    @property
    def data_shard(self) -> tuple[int, int]:
        """(replica, replicas): each pipeline reads its share of every batch."""
        return self.replica, self.replicas

    @property
    def is_main(self) -> bool:
        return self.comm.rank == 0

    @property
    def position(self) -> str:
        tensor = f", tensor rank {self.tensor_rank} of {self.tensor_size}" if self.tensor_comm is not None else ""
        replica = f", replica {self.replica}" if self.replicas > 1 else ""
        return f"rank {self.comm.rank} (stage {self.stage_index} of {self.num_stages}{tensor}{replica})"

    def stage_allgather(self, value: Any) -> list[Any]:
        """`value` from every rank holding this copy of the model, in stage order (tensor ranks within);
        collective over those ranks."""
        with waiting_in("allgather over the pipeline's stages"):
            return self.model_comm.allgather_object(value)

    def merge_over_stages(self, part: dict[str, Any]) -> dict[str, Any] | None:
        """The union of the stages' dicts on rank 0 (stage 0 of replica 0), None elsewhere; collective.

        Entries of split parameters are joined from the tensor ranks' shares into whole arrays.
        """
        return join_over_stages(part, self.model_comm, self.is_main, self._state_shapes, self.splits)

    def all_tensor_ranks(self, flag: bool) -> bool:
        """Whether `flag` holds on every tensor rank of this stage (collective over them; `flag` without any)."""
        if self.tensor_comm is None:
            return flag
        return bool(self.tensor_comm.allreduce(numpy.array([int(flag)]), "min")[0])

    def locate_non_finite(self, x: Array | None) -> str:
        """Where a forward pass of `x` (read on the first stage) first yields NaN or Inf; collective.

        Returns, on every rank of the pipeline, e.g. "layer 3 (Linear(16, 16)) on rank 1 (stage 1 of 2)".
        """
        return first_non_finite_stage_layer(self, x)

    def __repr__(self) -> str:
        return (f"Pipeline(stage {self.stage_index} of {self.num_stages}, schedule={self.schedule_name!r}, "
                f"micro_batches={self.micro_batches}, balance={self.balance}, layers={self.chunk_ranges})")
