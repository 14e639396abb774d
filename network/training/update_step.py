"""UpdateStep: one optimizer update on one batch, from the strategy's step to the optimizer's, decided alike on every rank."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable

import numpy

from mpiprop.network.backend import to_device
from mpiprop.network.compute.precision import Precision, using_precision
from mpiprop.network.layers.losses import Loss
from mpiprop.network.optim.clipping import clip_grad_norm_, grad_power_sum
from mpiprop.network.optim.grad_scaler import GradScaler, ScaledLoss
from mpiprop.network.optim.lr_schedules import set_lr
from mpiprop.network.training.metrics import count_correct
from mpiprop.network.training.non_finite import NOT_REPRODUCED, NonFiniteError, grads_finite, non_finite_grads
from mpiprop.network.training.run_state import RunState
from mpiprop.network.training.strategy import TrainingStrategy

MAX_SKIPS_IN_A_ROW = 20
NON_FINITE_FIX = ("lower the learning rate, set clip_grad_norm, check the data, "
                  "or pass non_finite='skip' to skip such steps")


class UpdateStep:
    """The strategy's step (forward, loss, backward, gradients in sync), then loss scaling, the non-finite
    policy, clipping, the learning-rate schedule and the optimizer's step.

    Every decision is taken from values all ranks agree on: the synchronised gradients (finite or
    not, and their norm, gathered over the ranks holding parts of the model) and, only when those
    are not finite, whether every rank's loss was finite. So all ranks skip, raise or update alike,
    the loss scale stays equal on every rank, and no rank enters a collective the others skip.

    Args:
        strategy: the layout (see `TrainingStrategy`).
        optimizer: over the strategy's parameters.
        loss_fn: a mean-reducing loss.
        precision: how products are computed (see `network.compute.precision`).
        grad_scaler: scales the loss (None: no scaling).
        clip_grad_norm: clip the gradients' global 2-norm to this (None: no clipping).
        lr_schedule: t -> learning rate, with `schedule_per` "step" or "epoch".
        non_finite: "raise" or "skip" a step whose gradients hold NaN or Inf.
        accuracy: count correct predictions into the run's metric sums.
    """

    def __init__(self, strategy: TrainingStrategy, optimizer: Any, loss_fn: Loss, *, precision: Precision,
                 grad_scaler: GradScaler | None = None, clip_grad_norm: float | None = None,
                 lr_schedule: Callable[[int], float] | None = None, schedule_per: str = "step",
                 non_finite: str = "raise", accuracy: bool = False):
        self.strategy, self.optimizer, self.precision = strategy, optimizer, precision
        self.grad_scaler, self.clip_grad_norm, self.non_finite, self.accuracy = (grad_scaler, clip_grad_norm,
                                                                                 non_finite, accuracy)
        self.lr_schedule, self.schedule_per = lr_schedule, schedule_per
        self.loss_fn = loss_fn if grad_scaler is None else ScaledLoss(loss_fn, grad_scaler)

    def run(self, inputs: Any, targets: Any, state: RunState, device: str) -> float:
        """Train on one batch and count the step in `state`; returns this rank's loss.

        Raises:
            NonFiniteError: on every rank alike, for NaN or Inf gradients with non_finite="raise", or
                after 20 skipped steps in a row.
        """
        x, y = to_device(inputs, device), to_device(targets, device)
        self.optimizer.zero_grad()
        with using_precision(self.precision), _overflow_expected(self.grad_scaler is not None):
            loss = self.strategy.train_step(x, y, self.loss_fn)
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.strategy.parameters())
        finite, power_sum = self._gradient_summary()
        if finite:
            self._update(y, loss, power_sum, state)
        else:
            self._skip_or_raise(x, loss, state)
        state.step += 1
        return loss

    def _update(self, y: Any, loss: float, power_sum: float, state: RunState) -> None:
        if self.grad_scaler is not None:
            self.grad_scaler.update(False)
        output = self.strategy.last_output
        correct = count_correct(output, y) if self.accuracy and output is not None else None
        if self.clip_grad_norm is not None:
            clip_grad_norm_(self.strategy.parameters(), self.clip_grad_norm, total_norm=power_sum ** 0.5)
        if self.lr_schedule is not None and self.schedule_per == "step":
            set_lr(self.optimizer, self.lr_schedule, state.step)
        self.optimizer.step()
        if output is not None:  # a pipeline counts each sample once, on one rank of its last stage
            state.train_totals.add(loss, len(y), correct, int(y.size))
        state.skipped_in_a_row = 0

    def _gradient_summary(self) -> tuple[bool, float]:
        """Whether the synchronised gradients of the whole model are finite, and the sum of their squares when
        clipping: one gather over the ranks holding its parts gives every rank the same answer."""
        ranks = self.strategy.ranks
        counted = list({id(p): p for p in ranks.counted_once(self.strategy.named_parameters())}.values())
        mine = (grads_finite(self.strategy.parameters()),
                grad_power_sum(counted) if self.clip_grad_norm is not None else 0.0)
        parts = ranks.gather_model(mine)
        return all(finite for finite, _ in parts), sum(power for _, power in parts)

    def _skip_or_raise(self, x: Any, loss: float, state: RunState) -> None:
        """Gradients with NaN or Inf on every rank: an overflow of the loss scale when every rank's loss was finite
        (the scale backs off, the step is skipped), else the non-finite policy."""
        losses_finite = all(self.strategy.ranks.gather(math.isfinite(loss)))
        if self.grad_scaler is not None and losses_finite:
            self.grad_scaler.update(True)
            self.optimizer.zero_grad()
            return
        if self.non_finite == "raise":
            raise NonFiniteError(self._non_finite_message(x, loss, state))
        self.optimizer.zero_grad()
        state.skipped_in_a_row += 1
        state.skipped_this_epoch += 1
        if state.skipped_in_a_row >= MAX_SKIPS_IN_A_ROW:
            raise NonFiniteError(f"{step_name(state, self.strategy.ranks.position)}: {state.skipped_in_a_row} steps "
                                 "in a row had NaN or Inf gradients and were skipped; training has diverged: lower "
                                 "the learning rate, set clip_grad_norm or check the data")

    def _non_finite_message(self, x: Any, loss: float, state: RunState) -> str:
        """Where the NaN or Inf came from, the same on every rank: the first layer whose output holds it
        on a rank whose loss is not finite, else the parameters whose (synchronised) gradients hold it."""
        ranks, where = self.strategy.ranks, step_name(state, self.strategy.ranks.position)
        located = None
        if not math.isfinite(loss):
            place = self.strategy.locate_non_finite(x)
            located = (place != NOT_REPRODUCED, f"{where}: the model's output or loss holds NaN or Inf, first in "
                                                 f"{place}; {NON_FINITE_FIX}")
        found = [pair for pair in ranks.gather(located) if pair is not None]
        if found:  # the loss is the global mean, so prefer a rank whose own batch reproduces the NaN
            return max(found, key=lambda pair: pair[0])[1]
        parts = ranks.gather_model((ranks.position, non_finite_grads(self.strategy.named_parameters())))
        named = [f"{name!r}" + (f" on {position}" if len(parts) > 1 else "")
                 for position, names in parts for name in names]
        averaged = " (averaged over ranks)" if ranks.size > 1 else ""
        return (f"{where}: the gradients{averaged} of {_first_few(named)} hold NaN "
                f"or Inf; the loss on this rank was {loss:.6g}; {NON_FINITE_FIX}")


def step_name(state: RunState, position: str) -> str:
    """The step in progress, for messages: "step 3 (epoch 1, batch 3) on rank 0"."""
    return f"step {state.step + 1} (epoch {state.epoch + 1}, batch {state.batch + 1}) on {position}"


def _first_few(names: list[str], shown: int = 4) -> str:
    listed = ", ".join(names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _overflow_expected(scaling: bool) -> Any:
    """With loss scaling, overflowing scaled gradients are how the scale learns its limit: numpy stays quiet."""
    return numpy.errstate(over="ignore", invalid="ignore") if scaling else contextlib.nullcontext()
