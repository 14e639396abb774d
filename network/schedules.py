"""Learning-rate schedules as closed forms: `schedule(t)` is the learning rate at step (or epoch) t.

Schedules keep no state, so a resumed run only needs t. Their values match PyTorch's
StepLR, ExponentialLR, CosineAnnealingLR and LinearLR followed by another schedule
(SequentialLR), counting t from 0.
"""
from __future__ import annotations

import math

from mpiprop.network.checks import non_negative_float, positive_int


class Schedule:
    """Base class: `lr = schedule(t)` for an integer t >= 0."""

    def __call__(self, t: int) -> float:
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(f"{type(self).__name__} needs a step t that is a non-negative integer, got {t!r}")
        return self.lr_at(t)

    def lr_at(self, t: int) -> float:
        raise NotImplementedError(f"{type(self).__name__} must implement lr_at")


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
    """lr(t) = min_lr + (base_lr - min_lr) * (1 + cos(pi * t / total)) / 2, and min_lr once t >= total."""

    def __init__(self, base_lr: float, total: int, min_lr: float = 0.0):
        self.base_lr = non_negative_float(base_lr, "base_lr")
        self.total = positive_int(total, "CosineAnnealingLR total")
        self.min_lr = non_negative_float(min_lr, "CosineAnnealingLR min_lr")

    def lr_at(self, t: int) -> float:
        progress = min(t, self.total) / self.total
        return self.min_lr + (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress)) / 2.0


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

    def lr_at(self, t: int) -> float:
        if t >= self.warmup_steps:
            return self.after(t - self.warmup_steps)
        factor = self.start_factor + (1.0 - self.start_factor) * t / self.warmup_steps
        return self.after(0) * factor
