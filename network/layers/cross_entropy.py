"""Softmax cross-entropy over logits, with class weights, ignore_index and label smoothing."""
from __future__ import annotations

import math
from typing import Any

import numpy

from mpiprop.network.backend import Array, device_of, elementwise_kernel, get_array_module, is_array, to_device
from mpiprop.network.layers.layer import REMEMBERED
from mpiprop.network.layers.losses import Loss


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy over logits (batch, classes) or (batch, classes, d1, ...), with PyTorch's options.

    Targets are class indices (integers of shape (batch,), or (batch, d1, ...)) or class
    probabilities (floats of the logits' shape). Logits with more dimensions are read as one row
    per position (the class axis moved last and the rest flattened), so a (batch, time) sequence
    of tokens is one call; reduction="none" gives a loss of shape (batch, d1, ...). Each row's loss is -sum_c a_c log softmax(z)_c, with coefficients
    a = weight[y] * (1 - label_smoothing) * onehot(y) + weight * label_smoothing / classes for
    indices (zero on rows whose label is `ignore_index`), and a = weight * (target *
    (1 - label_smoothing) + label_smoothing / classes) for probabilities; its gradient is
    sum(a) * softmax(z) - a. "mean" divides the sum by the total weight of the rows kept
    (their count without `weight`) for indices, by the number of rows for probabilities.

    Args:
        weight: a weight per class (an array of shape (classes,)), or None for equal weights.
        ignore_index: rows with this label count neither in the loss nor in the mean
            (class-index targets only).
        reduction: "mean", "sum" or "none".
        label_smoothing: in [0, 1]: the share of the target spread evenly over all classes.

    Raises:
        ValueError: for a weight that is not one-dimensional or a label_smoothing outside [0, 1].
    """

    def __init__(self, weight: Array | None = None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__(reduction)
        if weight is not None and (not is_array(weight) or weight.ndim != 1):
            raise ValueError(f"CrossEntropyLoss weight must be a one-dimensional array with a weight per class, got "
                             f"{type(weight).__name__} of shape {getattr(weight, 'shape', None)}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, numpy.integer)):
            raise TypeError(f"CrossEntropyLoss ignore_index must be an integer, got {ignore_index!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss label_smoothing must be in [0, 1], got {label_smoothing}")
        self.weight = weight
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)

    def backward(self, cache: Any = REMEMBERED, grad_output: float | Array | None = None) -> Array:
        """As `Loss.backward`: the gradient with respect to the logits, of their shape (classes on axis 1)."""
        grad = super().backward(cache, grad_output)
        if grad.ndim <= 2:
            return grad
        xp = get_array_module(grad)
        return xp.ascontiguousarray(xp.moveaxis(grad, -1, 1))

    def _losses(self, logits, target):
        probabilities = self._check_target(logits, target)
        positions = (logits.shape[0],) + tuple(logits.shape[2:])
        rows = _class_axis_last(logits)
        target = _class_axis_last(target) if probabilities else target.reshape(-1)
        losses, count, cache = self._row_losses(rows, target, probabilities)
        if self.reduction == "none":
            losses = losses.reshape(positions)
        return losses, count, (cache, positions + (logits.shape[1],))

    def _row_losses(self, logits, target, probabilities):
        """Losses of (rows, classes) logits: (losses per row, the count "mean" divides by, cache for `_gradient`)."""
        if get_array_module(logits) is not numpy and not probabilities and self.weight is None \
                and not self.label_smoothing and self.reduction != "none":
            fused = self._fused_gpu_losses(logits, target)
            if fused is not None:
                return fused
        xp = get_array_module(logits)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_sum_exp = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))
        log_softmax = shifted - log_sum_exp
        if probabilities:
            coefficients, count = self._probability_coefficients(logits, target), logits.shape[0]
        else:
            coefficients, count = self._class_index_coefficients(logits, target)
        losses = -(coefficients * log_softmax).sum(axis=1)
        return losses, count, (log_softmax, coefficients)

    def _gradient(self, cache):
        """The gradient with the class axis last, of shape (batch, d1, ..., classes)."""
        cache, shape = cache
        if is_array(cache):  # the fused GPU forward already computed the gradient
            return cache.reshape(shape)
        log_softmax, coefficients = cache
        xp = get_array_module(log_softmax)
        return (xp.exp(log_softmax) * coefficients.sum(axis=1, keepdims=True) - coefficients).reshape(shape)

    def denominator(self, target: Array) -> float:
        """Rows for probabilities; for class indices the total class weight of the labels not `ignore_index`."""
        kept = None if target.dtype.kind == "f" else target[target != self.ignore_index]
        if kept is None or self.weight is None:
            return float(target.shape[0] if kept is None else kept.size)
        return float(to_device(self.weight, device_of(kept))[kept.clip(0, self.weight.shape[0] - 1)].sum())

    def _class_weights(self, logits: Array) -> Array:
        xp = get_array_module(logits)
        if self.weight is None:
            return xp.ones(logits.shape[1], dtype=logits.dtype)
        if self.weight.shape[0] != logits.shape[1]:
            raise ValueError(f"CrossEntropyLoss weight has {self.weight.shape[0]} entries but the logits have "
                             f"{logits.shape[1]} classes; pass one weight per class")
        return to_device(self.weight, device_of(logits)).astype(logits.dtype, copy=False)

    def _class_index_coefficients(self, logits: Array, labels: Array) -> tuple[Array, float]:
        xp = get_array_module(logits)
        batch, classes = logits.shape
        weights = self._class_weights(logits)
        kept = labels != self.ignore_index
        safe_labels = xp.where(kept, labels, 0)
        low, high = int(safe_labels.min()), int(safe_labels.max())
        if low < 0 or high >= classes:
            raise ValueError(f"CrossEntropyLoss labels must lie in [0, {classes}) for {classes} classes, got values "
                             f"from {int(labels.min())} to {int(labels.max())}; only ignore_index="
                             f"{self.ignore_index} may lie outside")
        row_weights = weights[safe_labels] * kept
        coefficients = xp.zeros_like(logits)
        coefficients[xp.arange(batch), safe_labels] = (1.0 - self.label_smoothing) * row_weights
        if self.label_smoothing:
            coefficients += (self.label_smoothing / classes) * kept[:, None] * weights
        return coefficients, float(row_weights.sum())

    def _probability_coefficients(self, logits: Array, target: Array) -> Array:
        target = target.astype(logits.dtype, copy=False)
        if self.label_smoothing:
            target = target * (1.0 - self.label_smoothing) + self.label_smoothing / logits.shape[1]
        return target * self._class_weights(logits) if self.weight is not None else target.copy()

    def _check_target(self, logits: Array, target: Array) -> bool:
        """Validate the shapes; True for probability targets, False for class indices."""
        if logits.ndim < 2:
            raise ValueError(f"CrossEntropyLoss expects logits of shape (batch, classes) or (batch, classes, d1, ...), "
                             f"got {tuple(logits.shape)}; give a single sample a batch dimension with logits[None]")
        if target.dtype.kind == "f" and target.shape == logits.shape:
            if self.ignore_index != -100:
                raise ValueError(f"CrossEntropyLoss ignore_index={self.ignore_index} applies to class-index targets "
                                 "but got class probabilities; leave ignore_index at its default")
            return True
        positions = (logits.shape[0],) + tuple(logits.shape[2:])
        if tuple(target.shape) != positions or target.dtype.kind not in "iu":
            expected = "(batch,)" if logits.ndim == 2 else f"{positions} (the logits' shape without the class axis 1)"
            raise TypeError(f"CrossEntropyLoss expects integer class labels of shape {expected}, got dtype "
                            f"{target.dtype} and shape {tuple(target.shape)}; use labels.astype('int64'), or "
                            f"give class probabilities as floats of the logits' shape {tuple(logits.shape)}"
                            + ("; for logits (batch, time, classes) pass logits.transpose(0, 2, 1) or reshape "
                               "both to rows" if logits.ndim == 3 and target.shape == logits.shape[:2] else ""))
        return False

    def _fused_gpu_losses(self, logits, labels):
        """The summed loss (as a one-element host array) and the gradient of the sum in one GPU kernel, one
        thread per row (cupy would launch a kernel per step), with one device-to-host transfer; None when a
        label equals ignore_index, which the generic path handles.

        A label out of range makes its row's loss NaN; only then are the labels inspected.
        """
        kernel = elementwise_kernel(
            "raw T logits, raw I labels, int32 classes, T inv_batch", "T row_loss, raw T grad",
            """const T* row = &logits[i * classes];
               T top = row[0];
               for (int j = 1; j < classes; ++j) top = max(top, row[j]);
               T sum = 0;
               for (int j = 0; j < classes; ++j) sum += exp(row[j] - top);
               const I label = labels[i];
               if (label < 0 || label >= classes) {
                   const T zero = 0;
                   row_loss = zero / zero;  // NaN
               } else {
                   row_loss = log(sum) - (row[label] - top);
                   for (int j = 0; j < classes; ++j)
                       grad[i * classes + j] = (exp(row[j] - top) / sum - (j == label)) * inv_batch;
               }""",
            "mpiprop_cross_entropy")
        xp = get_array_module(logits)
        logits, labels = xp.ascontiguousarray(logits), xp.ascontiguousarray(labels)
        batch, classes = logits.shape
        row_loss = xp.empty(batch, dtype=logits.dtype)
        grad = xp.empty_like(logits)
        kernel(logits, labels, numpy.int32(classes), logits.dtype.type(1.0), row_loss, grad)
        total = float(row_loss.sum())
        if math.isnan(total):
            if bool((labels == self.ignore_index).any()):
                return None
            self._class_index_coefficients(logits, labels)  # raises, naming the labels out of range
        return numpy.array([total]), batch, grad


def _class_axis_last(array: Array) -> Array:
    """(batch, classes, d1, ...) as (batch * d1 * ..., classes); a 2-D array as it is."""
    if array.ndim == 2:
        return array
    return get_array_module(array).moveaxis(array, 1, -1).reshape(-1, array.shape[1])
