"""StageExecutor: run one pipeline rank's steps, sending activations forward and gradients back."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy

from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.distributed.pipeline.micro_batches import BatchPlan, loss_weights, micro_batch_slices
from mpiprop.distributed.pipeline.pipeline_stats import StageStats, StepRecord
from mpiprop.distributed.pipeline.pipeline_schedules import BACKWARD, BACKWARD_INPUT, BACKWARD_WEIGHT, FORWARD, Step
from mpiprop.distributed.pipeline.stage_links import ACTIVATION, GRADIENT, HEADER, StageLinks, decode_header, encode_header
from mpiprop.distributed.reliability.timeline import span
from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.layers.losses import Loss
from mpiprop.network.training.non_finite import is_finite
from mpiprop.network.layers.sequential import ParametersFinal, Sequential

RECEIVE_AHEAD = 2  # activation receives posted before the forward that needs them


@dataclass
class RunResult:
    """A run's outcome on one rank: the weighted loss and outputs (last rank only) and the timeline."""

    loss: float | None
    outputs: list[Array] | None
    stats: StageStats


class StageExecutor:
    """Executes steps for the local chunks of one pipeline rank.

    Rank r of p holds chunks 0..v-1, which are virtual stages r, r + p, ..., r + (v-1) p of
    the model. Activation shapes at each boundary are learnt from a small header message
    the first time a given input shape and dtype goes through, and remembered afterwards.

    Args:
        chunks: this rank's slices of the model, in chunk order.
        comm: the pipeline communicator; its ranks are the stages, in order.
        activation_rows: the rows of the activation between stages for a micro-batch of so many rows
            (all of them unless a tensor-parallel model cuts them; see `rows_between_stages`).
    """

    def __init__(self, chunks: list[Sequential], comm: Communicator,
                 activation_rows: Callable[[int], int] = lambda rows: rows):
        self.chunks = chunks
        self.activation_rows = activation_rows
        self.comm = comm
        self.rank, self.ranks = comm.rank, comm.size
        self.virtual_stages = len(chunks) * self.ranks
        params = [p.data for chunk in chunks for p in chunk.parameters()]
        self.xp = get_array_module(*params) if params else numpy
        self._input_features: dict[tuple, tuple[tuple[int, ...], numpy.dtype]] = {}
        self._announced: set[tuple] = set()

    def stage_of(self, step: Step) -> int:
        """The virtual stage a step runs on."""
        return step.chunk * self.ranks + self.rank

    def run(self, steps: list[Step], plan: BatchPlan, inputs: Array | None = None, targets: Array | None = None,
            loss_fn: Loss | None = None, keep_outputs: bool = False,
            on_parameters_final: ParametersFinal | None = None, weights: list[float] | None = None) -> RunResult:
        """Execute `steps` for one batch.

        Args:
            steps: this rank's schedule.
            plan: micro-batch sizes and input signature, identical on every rank.
            inputs: the batch (first rank only).
            targets: the targets (last rank only, with `loss_fn`).
            loss_fn: the loss on the last stage's output; its gradient starts backward.
            keep_outputs: keep the last stage's outputs (prediction).
            on_parameters_final: passed to each chunk's last weight-gradient step (see
                `Sequential.backward`), so the replicas' gradient sync overlaps that backward.
            weights: each micro-batch's weight in the loss (last rank): its share of the loss's
                denominator (see `loss_shares`); None for its share of the rows.
        """
        run = _Run(self, steps, plan, inputs, targets, loss_fn, keep_outputs)
        if weights is not None:
            run.weights = list(weights)
        run.final_weight_steps = {step.chunk: step for step in steps if step.releases_stash}
        run.on_parameters_final = on_parameters_final
        return run.execute()

    # --- what the executor remembers between batches -------------------------------------
    def known_input_feature(self, signature: tuple, stage: int):
        return self._input_features.get((signature, stage))

    def remember_input_feature(self, signature: tuple, stage: int, feature) -> None:
        self._input_features[(signature, stage)] = feature

    def first_announcement(self, signature: tuple, stage: int) -> bool:
        """True once per (signature, stage): the first time an activation goes to `stage`."""
        key = (signature, stage)
        if key in self._announced:
            return False
        self._announced.add(key)
        return True


class _Run:
    """The state of one batch on one rank: stashed caches, posted receives, the loss so far."""

    def __init__(self, executor: StageExecutor, steps: list[Step], plan: BatchPlan, inputs: Array | None,
                 targets: Array | None, loss_fn: Loss | None, keep_outputs: bool):
        self.executor, self.steps, self.plan = executor, steps, plan
        self.last_stage = executor.virtual_stages - 1
        self.links = StageLinks(executor.comm, executor.virtual_stages, len(plan.sizes))
        self.inputs, self.targets, self.loss_fn = inputs, targets, loss_fn
        self.weights = loss_weights(list(plan.sizes))
        self.rows = micro_batch_slices(list(plan.sizes))
        self.training = any(not step.is_forward for step in steps)
        self.outputs: dict[int, Array] | None = {} if keep_outputs else None
        self.stash: dict[tuple[int, int], list[Any]] = {}
        self.loss = 0.0
        self.stats = StageStats(rank=executor.rank)
        self.incoming = [s for s in steps if s.is_forward and executor.stage_of(s) > 0]
        self.next_incoming = 0
        self.posted_ahead = 0
        self.final_weight_steps: dict[int, Step] = {}
        self.on_parameters_final: ParametersFinal | None = None

    def execute(self) -> RunResult:
        started = time.perf_counter()
        self._post_header_receives()
        self._post_ahead()
        handlers = {FORWARD: self._forward, BACKWARD: self._backward,
                    BACKWARD_INPUT: self._backward_input, BACKWARD_WEIGHT: self._backward_weight}
        for step in self.steps:
            begin, waited = time.perf_counter(), self.links.waited
            with span(step.kind, micro_batch=step.micro_batch, chunk=step.chunk):
                handlers[step.kind](step)
            end = time.perf_counter()
            self.stats.records.append(StepRecord(step, begin - started, end - started, self.links.waited - waited))
            self._post_ahead()
            self.links.progress()
        self.links.finish()
        self.stats.total = time.perf_counter() - started
        is_last = self.executor.rank == self.last_stage % self.executor.ranks
        outputs = [self.outputs[i] for i in sorted(self.outputs)] if self.outputs is not None and is_last else None
        return RunResult(self.loss if is_last else None, outputs, self.stats)

    # --- the four kinds of step -------------------------------------------------------------
    def _forward(self, step: Step) -> None:
        stage = self.executor.stage_of(step)
        x = self.inputs[self.rows[step.micro_batch]] if stage == 0 else self._receive_activation(step, stage)
        y, cache = self.executor.chunks[step.chunk].forward(x)
        output_grad = None
        if stage == self.last_stage:
            output_grad = self._loss_and_gradient(step.micro_batch, y)
        else:
            self._send_activation(y, stage + 1, step.micro_batch)
            if self.training:
                self.links.post_receive(self.executor.xp.empty_like(y), stage, step.micro_batch, GRADIENT)
        if self.training:
            self.stash[(step.micro_batch, step.chunk)] = [cache, output_grad]
            self.stats.peak_stash = max(self.stats.peak_stash, len(self.stash))

    def _backward(self, step: Step) -> None:
        stage = self.executor.stage_of(step)
        cache, dy = self._stashed_with_gradient(step, stage)
        del self.stash[(step.micro_batch, step.chunk)]
        chunk, hook = self.executor.chunks[step.chunk], self._hook_for(step)
        if stage == 0:
            chunk.backward(dy, cache, input_grad=False, on_parameters_final=hook)
        else:
            dx = chunk.backward(dy, cache, on_parameters_final=hook)
            self.links.send(dx, stage - 1, step.micro_batch, GRADIENT)

    def _backward_input(self, step: Step) -> None:
        stage = self.executor.stage_of(step)
        cache, dy = self._stashed_with_gradient(step, stage)
        self.stash[(step.micro_batch, step.chunk)][1] = dy
        if stage > 0:  # the first stage has no input gradient to send; its weight step does all the work
            dx = self.executor.chunks[step.chunk].backward_input(dy, cache)
            self.links.send(dx, stage - 1, step.micro_batch, GRADIENT)

    def _backward_weight(self, step: Step) -> None:
        cache, dy = self.stash.pop((step.micro_batch, step.chunk))
        chunk, hook = self.executor.chunks[step.chunk], self._hook_for(step)
        if self.executor.stage_of(step) == 0:
            chunk.backward(dy, cache, input_grad=False, on_parameters_final=hook)
        else:
            chunk.backward_weight(dy, cache, on_parameters_final=hook)

    def _hook_for(self, step: Step) -> ParametersFinal | None:
        """The gradient hook on a chunk's last weight-gradient step of the batch, None before it."""
        return self.on_parameters_final if self.final_weight_steps.get(step.chunk) is step else None

    # --- inputs, outputs and the loss --------------------------------------------------------
    def _loss_and_gradient(self, micro_batch: int, y: Array) -> Array | None:
        if self.outputs is not None:
            self.outputs[micro_batch] = y
        if self.loss_fn is None:
            return None
        if not is_finite(y):  # NaN loss and gradient: every stage's gradients turn NaN, and the step is skipped
            self.loss = math.nan
            return self.executor.xp.full_like(y, math.nan) if self.training else None
        weight = self.weights[micro_batch]
        if weight == 0:  # nothing of this micro-batch counts (every target ignored)
            return self.executor.xp.zeros_like(y) if self.training else None
        value, loss_cache = self.loss_fn.forward(y, self.targets[self.rows[micro_batch]])
        self.loss += value * weight
        if not self.training:
            return None
        return self.loss_fn.backward(loss_cache) * y.dtype.type(weight)

    def _stashed_with_gradient(self, step: Step, stage: int) -> tuple[Any, Array]:
        cache, dy = self.stash[(step.micro_batch, step.chunk)]
        if dy is None:
            dy = self.links.take(stage, step.micro_batch, GRADIENT)
        return cache, dy

    # --- activations between stages ----------------------------------------------------------
    def _send_activation(self, y: Array, stage: int, micro_batch: int) -> None:
        if self.executor.first_announcement(self.plan.signature, stage):
            header = encode_header(tuple(y.shape[1:]), y.dtype)
            self.links.send(header, stage, 0, HEADER)
        self.links.send(y, stage, micro_batch, ACTIVATION)

    def _post_header_receives(self) -> None:
        for stage in sorted({self.executor.stage_of(s) for s in self.incoming}):
            if self.executor.known_input_feature(self.plan.signature, stage) is None:
                self.links.post_receive(numpy.empty(16, dtype=numpy.int64), stage, 0, HEADER)

    def _input_feature(self, stage: int, block: bool):
        """Per-row shape and dtype of the activations into `stage`; None if not known yet and not `block`."""
        feature = self.executor.known_input_feature(self.plan.signature, stage)
        if feature is None and (block or self.links.has_arrived(stage, 0, HEADER)):
            feature = decode_header(self.links.take(stage, 0, HEADER))
            self.executor.remember_input_feature(self.plan.signature, stage, feature)
        return feature

    def _post_ahead(self, block: bool = False) -> None:
        """Post activation receives, in the order the steps will need them, up to RECEIVE_AHEAD ahead."""
        while self.next_incoming < len(self.incoming) and (block or self.posted_ahead < RECEIVE_AHEAD):
            step = self.incoming[self.next_incoming]
            stage = self.executor.stage_of(step)
            feature = self._input_feature(stage, block)
            if feature is None:
                return
            shape, dtype = feature
            rows = self.executor.activation_rows(self.plan.sizes[step.micro_batch])
            buffer = self.executor.xp.empty((rows, *shape), dtype=dtype)
            self.links.post_receive(buffer, stage, step.micro_batch, ACTIVATION)
            self.next_incoming += 1
            self.posted_ahead += 1
            block = False

    def _receive_activation(self, step: Step, stage: int) -> Array:
        if not self.links.is_posted(stage, step.micro_batch, ACTIVATION):
            self._post_ahead(block=True)
        self.posted_ahead -= 1
        return self.links.take(stage, step.micro_batch, ACTIVATION)
