"""Learning-rate schedules as closed forms: `schedule(t)` is the learning rate at step (or epoch) t.

Schedules keep no state, so a resumed run only needs t. Their values match PyTorch's
StepLR, ExponentialLR, CosineAnnealingLR and LinearLR followed by another schedule
(SequentialLR), counting t from 0, for every t, and `set_lr` gives each parameter group
what PyTorch's scheduler gives it.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Callable

from mpiprop.network.checks import non_negative_float, positive_int


class Schedule:
    """Base class: `lr = schedule(t)` for an integer t >= 0, starting from `base_lr`."""

    base_lr: float

    def __call__(self, t: int) -> float:
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(f"{type(self).__name__} needs a step t that is a non-negative integer, got {t!r}")
        return self.lr_at(t)

    def lr_at(self, t: int) -> float:
        raise NotImplementedError(f"{type(self).__name__} must implement lr_at")

    def scaled(self, factor: float) -> "Schedule":
        """The same schedule from base_lr * factor (a floor such as min_lr stays as it is)."""
        scaled = copy.copy(self)
        scaled.base_lr = self.base_lr * factor
        return scaled


def set_lr(optimizer: Any, schedule: Callable[[int], float], t: int) -> None:
    """Set every parameter group's learning rate for step (or epoch) t.

    A group whose initial learning rate is k times the optimizer's `lr` argument follows
    `schedule.scaled(k)`, so with base_lr equal to that argument each group gets what a
    PyTorch scheduler gives it (which starts each group from its own initial lr). A plain
    callable's value is multiplied by k.

    Args:
        optimizer: an `mpiprop.network.optim` optimizer (anything with `defaults["lr"]` and
            `param_groups` holding "lr" and "initial_lr").
        schedule: a `Schedule`, or any callable t -> learning rate.
        t: the step or epoch.
    """
    reference = optimizer.defaults["lr"]
    for group in optimizer.param_groups:
        factor = group["initial_lr"] / reference if reference else 1.0
        if factor == 1.0:
            group["lr"] = schedule(t)
        elif isinstance(schedule, Schedule):
            group["lr"] = schedule.scaled(factor)(t)
        else:
            group["lr"] = factor * schedule(t)


class ConstantLR(Schedule):
    """lr(t) = base_lr."""

    def __init__(self, base_lr: float):
        self.base_lr = non_negative_float(base_lr, "base_lr")

    def lr_at(self, t: int) -> float:
        return self.base_lr


class StepLR(Schedule):
    """lr(t) = base_lr * gamma ** (t // step_size): multiply by gamma every step_size steps."""

    def __init__(self, base_lr: float, step_size: int, gamma: float = 0.1):
        self.base_lr = non_negative_float(base_lr, "base_lr")
        self.step_size = positive_int(step_size, "StepLR step_size")
        self.gamma = non_negative_float(gamma, "StepLR gamma")

    def lr_at(self, t: int) -> float:
        return self.base_lr * self.gamma ** (t // self.step_size)


class ExponentialLR(Schedule):
    """lr(t) = base_lr * gamma ** t."""

    def __init__(self, base_lr: float, gamma: float):
        self.base_lr = non_negative_float(base_lr, "base_lr")
        self.gamma = non_negative_float(gamma, "ExponentialLR gamma")

    def lr_at(self, t: int) -> float:
        return self.base_lr * self.gamma**t


class CosineAnnealingLR(Schedule):
    """lr(t) = min_lr + (base_lr - min_lr) * (1 + cos(pi * t / total)) / 2.

    It reaches min_lr at t = total and, as PyTorch's, rises again after it (back to base_lr at
    t = 2 * total); give `total` the number of steps the run takes to end at min_lr.
    """

    def __init__(self, base_lr: float, total: int, min_lr: float = 0.0):
        self.base_lr = non_negative_float(base_lr, "base_lr")
        self.total = positive_int(total, "CosineAnnealingLR total")
        self.min_lr = non_negative_float(min_lr, "CosineAnnealingLR min_lr")

    def lr_at(self, t: int) -> float:
        return self.min_lr + (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * t / self.total)) / 2.0


class LinearWarmup(Schedule):
    """Ramp linearly for `warmup_steps`, then follow `after` (started afresh at t = warmup_steps).

    lr(t) = after(0) * (start_factor + (1 - start_factor) * t / warmup_steps) for t < warmup_steps,
    lr(t) = after(t - warmup_steps) afterwards.

    Args:
        after: the schedule once warm (e.g. `CosineAnnealingLR`); a number means a constant rate.
        warmup_steps: length of the ramp.
        start_factor: fraction of after(0) at t = 0, in [0, 1] (PyTorch LinearLR's default 1/3).
    """

    def __init__(self, after: Schedule | float, warmup_steps: int, start_factor: float = 1.0 / 3.0):
        self.after = after if isinstance(after, Schedule) else ConstantLR(after)
        self.warmup_steps = positive_int(warmup_steps, "LinearWarmup warmup_steps")
        if not 0.0 <= start_factor <= 1.0:
            raise ValueError(f"LinearWarmup start_factor must be in [0, 1], got {start_factor}")
        self.start_factor = float(start_factor)

    @property
    def base_lr(self) -> float:
        return self.after.base_lr

    def scaled(self, factor: float) -> "LinearWarmup":
        scaled = copy.copy(self)
        scaled.after = self.after.scaled(factor)
        return scaled

    def lr_at(self, t: int) -> float:
        if t >= self.warmup_steps:
            return self.after(t - self.warmup_steps)
        factor = self.start_factor + (1.0 - self.start_factor) * t / self.warmup_steps
        return self.after(0) * factor
