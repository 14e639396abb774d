"""Mean squared error: (pred - target)² per element."""
from __future__ import annotations

from mpiprop.network.layers.losses import Loss


class MSELoss(Loss):
    """(pred - target)² per element, reduced by `reduction` (default the mean over all elements)."""

    def _losses(self, pred, target):
        if pred.shape != target.shape:
            raise ValueError(f"MSELoss: prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        diff = pred - target.astype(pred.dtype, copy=False)
        return diff * diff, diff.size, diff

    def _gradient(self, diff):
        return diff * 2.0
