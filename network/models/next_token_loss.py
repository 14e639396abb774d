"""NextTokenLoss: cross-entropy of a language model's (B, T, V) logits against the (B, T) next-token ids."""
from __future__ import annotations

from typing import Any

from mpiprop.network.backend import Array
from mpiprop.network.layers.layer import REMEMBERED
from mpiprop.network.layers.cross_entropy import CrossEntropyLoss
from mpiprop.network.layers.losses import Loss


class NextTokenLoss(Loss):
    """Softmax cross-entropy at every position: logits (B, T, V), target ids (B, T), as nanoGPT computes
    `cross_entropy(logits.view(-1, V), targets.view(-1))`.

    "mean" averages over all B·T positions (those labelled `ignore_index` excepted), "sum" adds
    them, "none" returns one loss per position, of shape (B, T).

    Args:
        ignore_index: positions with this target id count neither in the loss nor in the mean.
        reduction: "mean", "sum" or "none".
        label_smoothing: in [0, 1], as for `CrossEntropyLoss`.

    Raises:
        ValueError: for another reduction or label_smoothing.
    """

    def __init__(self, ignore_index: int = -100, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(reduction)
        self.rows = CrossEntropyLoss(ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing)

    def forward(self, pred: Array, target: Array) -> tuple[float | Array, Any]:
        """The loss over all positions and the cache `backward` needs.

        Raises:
            TypeError, ValueError: for logits that are not (B, T, V) or ids that are not integers of shape (B, T).
        """
        if getattr(pred, "ndim", None) != 3 or getattr(target, "ndim", None) != 2 \
                or tuple(pred.shape[:2]) != tuple(target.shape):
            raise ValueError(f"NextTokenLoss expects logits (batch, time, vocabulary) and target ids (batch, time), "
                             f"got {tuple(getattr(pred, 'shape', ()))} and {tuple(getattr(target, 'shape', ()))}")
        value, cache = self.rows.forward(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))
        if self.reduction == "none":
            value = value.reshape(target.shape)
        return value, (cache, tuple(pred.shape))

    def denominator(self, target: Array) -> float:
        """What "mean" divides the summed losses by: the positions whose target is not `ignore_index`."""
        return self.rows.denominator(target.reshape(-1))

    def backward(self, cache: Any = REMEMBERED, grad_output: float | Array | None = None) -> Array:
        """Gradient of the loss with respect to the logits, of their shape (B, T, V).

        Args:
            cache: from `forward`; defaults to the one remembered by the last `loss(pred, target)`.
            grad_output: as for `Loss.backward`; of shape (B, T) with reduction="none".
        """
        if cache is REMEMBERED:
            if self._last_cache is REMEMBERED:
                raise RuntimeError("NextTokenLoss.backward called before the loss was computed")
            cache, self._last_cache = self._last_cache, REMEMBERED
        inner, shape = cache
        if self.reduction == "none" and grad_output is not None:
            grad_output = grad_output.reshape(-1)
        return self.rows.backward(inner, grad_output).reshape(shape)

    def __repr__(self) -> str:
        return f"NextTokenLoss(reduction={self.reduction!r})"
