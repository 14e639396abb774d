"""GradScaler: dynamic loss scaling for float16 gradients, with torch.amp.GradScaler's rules."""
from __future__ import annotations

from typing import Any, Callable, Iterable

from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.checks import positive_int
from mpiprop.network.layers.layer import REMEMBERED
from mpiprop.network.layers.losses import Loss
from mpiprop.network.layers.parameter import Parameter


class GradScaler:
    """Scales the loss gradient so float16 gradients neither overflow nor flush to zero.

    One step: backpropagate `scaler.scale(loss_gradient)`, then `scaler.step(optimizer, parameters)`
    divides the gradients by the scale, skips the update when any of them is inf or NaN, and
    `update` shrinks the scale after such a step (times `backoff_factor`) or grows it (times
    `growth_factor`) after `growth_interval` good steps in a row, as torch.amp.GradScaler does.

    Args:
        init_scale: the first scale.
        growth_factor: the factor applied after `growth_interval` steps without inf or NaN (> 1).
        backoff_factor: the factor applied after a step with inf or NaN (between 0 and 1).
        growth_interval: how many good steps in a row grow the scale.

    Raises:
        ValueError: for a non-positive scale, a growth factor not above 1, a backoff factor outside
            (0, 1) or a non-positive interval.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        if not init_scale > 0:
            raise ValueError(f"GradScaler init_scale must be positive, got {init_scale}")
        if not growth_factor > 1:
            raise ValueError(f"GradScaler growth_factor must be above 1, got {growth_factor}")
        if not 0 < backoff_factor < 1:
            raise ValueError(f"GradScaler backoff_factor must lie in (0, 1), got {backoff_factor}")
        self.scale_value = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = positive_int(growth_interval, "GradScaler growth_interval")
        self.good_steps = 0
        self.skipped_steps = 0

    def scale(self, loss_gradient: Array) -> Array:
        """The gradient of the loss times the scale: what to backpropagate."""
        return loss_gradient * loss_gradient.dtype.type(self.scale_value)

    def unscale_(self, parameters: Iterable[Parameter]) -> bool:
        """Divide every gradient by the scale, in place; True when any gradient holds inf or NaN."""
        found_non_finite = False
        for p in parameters:
            p.grad *= p.grad.dtype.type(1.0 / self.scale_value)
            found_non_finite = found_non_finite or not _all_finite(p.grad)
        return found_non_finite

    def step(self, optimizer: Any, parameters: Iterable[Parameter],
             agree: Callable[[bool], bool] = lambda found: found) -> bool:
        """Unscale the gradients, update with `optimizer` unless one is non-finite, then `update`.

        Args:
            optimizer: anything with `step()`.
            parameters: the parameters whose gradients were scaled.
            agree: combines this process's finding with the other processes' (ranks that hold other
                parameters, such as pipeline stages, must skip the same steps); the identity by default.

        Returns:
            True when the optimizer stepped, False when the step was skipped.
        """
        found_non_finite = agree(self.unscale_(parameters))
        if not found_non_finite:
            optimizer.step()
        self.update(found_non_finite)
        return not found_non_finite

    def update(self, found_non_finite: bool) -> None:
        """Shrink the scale after a step with inf or NaN; grow it after `growth_interval` good steps."""
        if found_non_finite:
            self.scale_value *= self.backoff_factor
            self.good_steps = 0
            self.skipped_steps += 1
            return
        self.good_steps += 1
        if self.good_steps == self.growth_interval:
            self.scale_value *= self.growth_factor
            self.good_steps = 0

    def state_dict(self) -> dict[str, Any]:
        """The scale, the factors and the count of good steps, for checkpoints."""
        return {"scale": self.scale_value, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "good_steps": self.good_steps,
                "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict`.

        Raises:
            ValueError: when an entry is missing.
        """
        missing = {"scale", "growth_factor", "backoff_factor", "growth_interval", "good_steps"} - set(state)
        if missing:
            raise ValueError(f"GradScaler state lacks {sorted(missing)}; it was not written by GradScaler.state_dict")
        self.scale_value = float(state["scale"])
        self.growth_factor = float(state["growth_factor"])
        self.backoff_factor = float(state["backoff_factor"])
        self.growth_interval = int(state["growth_interval"])
        self.good_steps = int(state["good_steps"])
        self.skipped_steps = int(state.get("skipped_steps", 0))

    def __repr__(self) -> str:
        return (f"GradScaler(scale={self.scale_value}, growth_factor={self.growth_factor}, "
                f"backoff_factor={self.backoff_factor}, growth_interval={self.growth_interval})")


def _all_finite(array: Array) -> bool:
    return bool(get_array_module(array).isfinite(array).all())


class ScaledLoss(Loss):
    """`loss_fn` whose gradient comes out multiplied by `scaler`'s current scale; its value is unscaled.

    What a training step backpropagates in float16 mixed precision: the strategies call it as any loss.
    """

    def __init__(self, loss_fn: Loss, scaler: GradScaler):
        super().__init__(loss_fn.reduction)
        self.loss_fn, self.scaler = loss_fn, scaler

    def forward(self, pred: Array, target: Array) -> tuple[Any, Any]:
        return self.loss_fn.forward(pred, target)

    def denominator(self, target: Array) -> float:
        return self.loss_fn.denominator(target)

    def backward(self, cache: Any = REMEMBERED, grad_output: Any = None) -> Array:
        if cache is REMEMBERED:
            if self._last_cache is REMEMBERED:
                raise RuntimeError(f"{type(self).__name__}.backward called before the loss was computed")
            cache, self._last_cache = self._last_cache, REMEMBERED
        scale = self.scaler.scale_value if grad_output is None else self.scaler.scale_value * grad_output
        return self.loss_fn.backward(cache, scale)

    def __repr__(self) -> str:
        return f"ScaledLoss({self.loss_fn!r}, {self.scaler!r})"
