"""Binary cross-entropy on logits, stable for any logit, with an optional positive-class weight."""
from __future__ import annotations

import numpy

from mpiprop.network.backend import Array, device_of, get_array_module, is_array, to_device
from mpiprop.network.layers.losses import Loss


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits: pos_weight·t·softplus(-z) + (1 - t)·softplus(z) per element, stable for
    any z; targets in [0, 1].

    Args:
        reduction: "mean", "sum" or "none".
        pos_weight: weight of the positive term, broadcast over the targets (e.g. one per class,
            of shape (classes,)); None means 1. Its gradient is sigmoid(z)·(pos_weight·t + 1 - t) - pos_weight·t.

    Raises:
        ValueError: for a pos_weight that is not an array.
    """

    def __init__(self, reduction: str = "mean", pos_weight: Array | None = None):
        super().__init__(reduction)
        if pos_weight is not None and not is_array(pos_weight):
            raise ValueError(f"BCEWithLogitsLoss pos_weight must be a numpy or cupy array, got "
                             f"{type(pos_weight).__name__}")
        self.pos_weight = pos_weight

    def _losses(self, logits, target):
        if logits.shape != target.shape:
            raise ValueError(f"BCEWithLogitsLoss: logits shape {tuple(logits.shape)} differs from target shape {tuple(target.shape)}")
        xp = get_array_module(logits)
        target = target.astype(logits.dtype, copy=False)
        if bool(((target < 0) | (target > 1)).any()):
            raise ValueError(f"BCEWithLogitsLoss targets must lie in [0, 1], got values from "
                             f"{float(target.min())} to {float(target.max())}")
        softplus = xp.maximum(logits, 0) + xp.log1p(xp.exp(-xp.abs(logits)))  # softplus(z); softplus(-z) = it - z
        if self.pos_weight is None:
            return softplus - target * logits, logits.size, (logits, target, None)
        positive_weight = self._positive_weight(logits, target)
        losses = positive_weight * target * (softplus - logits) + (1.0 - target) * softplus
        return losses, logits.size, (logits, target, positive_weight)

    def _gradient(self, cache):
        logits, target, positive_weight = cache
        xp = get_array_module(logits)
        sigmoid = xp.exp(-xp.logaddexp(0, -logits)).astype(logits.dtype, copy=False)
        if positive_weight is None:
            return sigmoid - target
        weighted_target = positive_weight * target
        return sigmoid * (weighted_target + 1.0 - target) - weighted_target

    def _positive_weight(self, logits: Array, target: Array) -> Array:
        try:
            numpy.broadcast_shapes(tuple(self.pos_weight.shape), tuple(target.shape))
        except ValueError:
            raise ValueError(f"BCEWithLogitsLoss pos_weight of shape {tuple(self.pos_weight.shape)} does not broadcast "
                             f"to the targets' shape {tuple(target.shape)}; give one weight per class, of shape "
                             f"({target.shape[-1]},)") from None
        return to_device(self.pos_weight, device_of(logits)).astype(logits.dtype, copy=False)
