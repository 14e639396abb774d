"""The Loss base class: input checks and PyTorch's reductions of the unreduced losses, and their gradient."""
from __future__ import annotations

import math
from typing import Any

import numpy

from mpiprop.network.backend import Array, device_of, get_array_module, is_array, to_device
from mpiprop.network.checks import all_finite, float_array
from mpiprop.network.layers.layer import REMEMBERED

REDUCTIONS = ("mean", "sum", "none")


class Loss:
    """Base class. `value = loss(pred, target)` then `dpred = loss.backward()`.

    The explicit form `value, cache = loss.forward(pred, target)` and
    `dpred = loss.backward(cache)` keeps nothing on the object, for pipelines
    with several micro-batches in flight.

    A subclass computes the unreduced losses (`_losses`) and the gradient of their sum
    (`_gradient`); this class reduces them as `reduction` asks, as PyTorch does:
    "mean" (a float), "sum" (a float) or "none" (an array, one loss per element or row).
    Under data parallelism each rank's mean is over its own shard, as in PyTorch DDP.

    Args:
        reduction: "mean", "sum" or "none".

    Raises:
        ValueError: for another reduction.
    """

    def __init__(self, reduction: str = "mean") -> None:
        if reduction not in REDUCTIONS:
            raise ValueError(f"{type(self).__name__} reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction
        self._last_cache: Any = REMEMBERED

    def __call__(self, pred: Array, target: Array) -> float | Array:
        value, self._last_cache = self.forward(pred, target)
        return value

    def forward(self, pred: Array, target: Array) -> tuple[float | Array, Any]:
        """The reduced loss and the cache `backward` needs.

        Returns:
            (value, cache): value is a float for "mean" and "sum", an array for "none".

        Raises:
            TypeError, ValueError: for inputs that do not fit the loss, naming their shapes and values.
        """
        name = type(self).__name__
        float_array(pred, f"{name} prediction")
        if not is_array(target):
            raise TypeError(f"{name} target must be a numpy or cupy array, got {type(target).__name__}")
        if get_array_module(pred) is not get_array_module(target):
            raise TypeError(f"{name}: prediction and target live on different devices; move the target with network.to_device")
        if pred.ndim == 0 or target.ndim == 0 or pred.shape[0] != target.shape[0]:
            raise ValueError(f"{name}: prediction has shape {tuple(pred.shape)} but target has shape "
                             f"{tuple(target.shape)}; their batch sizes must match")
        if pred.shape[0] == 0:
            raise ValueError(f"{name} got an empty batch: prediction shape {tuple(pred.shape)}; "
                             "skip empty batches or use drop_last=True")
        # Non-finite inputs always make the loss non-finite, so on the GPU, where each check
        # costs a sync, the inputs are only inspected when the loss is.
        on_gpu = get_array_module(pred) is not numpy
        if not on_gpu:
            self._check_finite(pred, target)
        losses, count, cache = self._losses(pred, target)
        value = self._reduce(losses, count)
        if on_gpu and not _is_finite(value):
            self._check_finite(pred, target)
        return value, (cache, self._gradient_scale(count), losses.shape)

    def _reduce(self, losses: Array, count: float) -> float | Array:
        if self.reduction == "none":
            return losses
        total = float(losses.sum())
        if self.reduction == "sum":
            return total
        return total / count if count else math.nan

    def _gradient_scale(self, count: float) -> float | None:
        """What "mean" divides by, as a factor (NaN when nothing counts, as in PyTorch); None for "none"."""
        if self.reduction == "none":
            return None
        if self.reduction == "sum":
            return 1.0
        return 1.0 / count if count else math.nan

    def denominator(self, target: Array) -> float:
        """What "mean" divides the summed losses for targets `target` by (here their elements): a shard's share of
        the whole batch's sum of them is its weight in torch's mean over the whole batch."""
        return float(target.size)

    def _check_finite(self, pred: Array, target: Array) -> None:
        name = type(self).__name__
        all_finite(pred, f"{name} prediction")
        if target.dtype.kind == "f":
            all_finite(target, f"{name} target", "check the data for missing or corrupt values")

    def backward(self, cache: Any = REMEMBERED, grad_output: float | Array | None = None) -> Array:
        """Gradient of the loss with respect to the prediction.

        Args:
            cache: from `forward`; defaults to the one remembered by the last `loss(pred, target)`.
            grad_output: the gradient arriving at the loss value: required with reduction="none"
                (an array of the value's shape), optional otherwise (a number, default 1).

        Returns:
            An array of the prediction's shape and dtype.

        Raises:
            RuntimeError: when no loss was computed.
            ValueError: when grad_output is missing for reduction="none" or has the wrong shape.
        """
        if cache is REMEMBERED:
            if self._last_cache is REMEMBERED:
                raise RuntimeError(f"{type(self).__name__}.backward called before the loss was computed")
            cache, self._last_cache = self._last_cache, REMEMBERED
        inner, scale, shape = cache
        grad = self._gradient(inner)
        if scale is None:
            grad *= self._unreduced_grad_output(grad_output, shape, grad)
        else:
            grad *= scale if grad_output is None else scale * float(grad_output)
        return grad

    def _unreduced_grad_output(self, grad_output: Any, shape: tuple[int, ...], grad: Array) -> Array:
        """grad_output for reduction="none", shaped to broadcast over the gradient."""
        if grad_output is None:
            raise ValueError(f"{type(self).__name__}(reduction='none') returns one loss per element of shape "
                             f"{tuple(shape)}; pass backward(grad_output=...) of that shape, or use "
                             "reduction='mean' or 'sum'")
        grad_output = to_device(get_array_module(grad).asarray(grad_output) if not is_array(grad_output)
                                else grad_output, device_of(grad))
        if tuple(grad_output.shape) != tuple(shape):
            raise ValueError(f"{type(self).__name__}.backward: grad_output has shape {tuple(grad_output.shape)} but "
                             f"the loss has shape {tuple(shape)}")
        return grad_output.astype(grad.dtype, copy=False).reshape(tuple(shape) + (1,) * (grad.ndim - len(shape)))

    def _losses(self, pred: Array, target: Array) -> tuple[Array, float, Any]:
        """(unreduced losses, the count "mean" divides their sum by, cache for `_gradient`)."""
        raise NotImplementedError(f"{type(self).__name__} must implement _losses")

    def _gradient(self, cache: Any) -> Array:
        """Gradient of the sum of the unreduced losses w.r.t. the prediction, in a fresh array."""
        raise NotImplementedError(f"{type(self).__name__} must implement _gradient")


def _is_finite(value: float | Array) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return bool(get_array_module(value).isfinite(value).all())
