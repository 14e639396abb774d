"""Losses with mean reduction: the value as a float, and on backward() the gradient w.r.t. the prediction."""
from __future__ import annotations

import math
from typing import Any

import numpy

from mpiprop.network.backend import Array, elementwise_kernel, get_array_module, is_array
from mpiprop.network.checks import all_finite, float_array
from mpiprop.network.layer import REMEMBERED


class Loss:
    """Base class. `value = loss(pred, target)` then `dpred = loss.backward()`.

    The explicit form `value, cache = loss.forward(pred, target)` and
    `dpred = loss.backward(cache)` keeps nothing on the object, for pipelines
    with several micro-batches in flight.
    """

    def __init__(self) -> None:
        self._last_cache: Any = REMEMBERED

    def __call__(self, pred: Array, target: Array) -> float:
        value, self._last_cache = self.forward(pred, target)
        return value

    def forward(self, pred: Array, target: Array) -> tuple[float, Any]:
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
        value, cache = self._forward(pred, target)
        if on_gpu and not math.isfinite(value):
            self._check_finite(pred, target)
        return value, cache

    def _check_finite(self, pred: Array, target: Array) -> None:
        name = type(self).__name__
        all_finite(pred, f"{name} prediction")
        if target.dtype.kind == "f":
            all_finite(target, f"{name} target", "check the data for missing or corrupt values")

    def backward(self, cache: Any = REMEMBERED) -> Array:
        """Gradient of the mean loss with respect to the prediction."""
        if cache is REMEMBERED:
            if self._last_cache is REMEMBERED:
                raise RuntimeError(f"{type(self).__name__}.backward called before the loss was computed")
            cache, self._last_cache = self._last_cache, REMEMBERED
        return self._backward(cache)


class MSELoss(Loss):
    """mean((pred - target)²) over all elements."""

    def _forward(self, pred, target):
        if pred.shape != target.shape:
            raise ValueError(f"MSELoss: prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        diff = pred - target.astype(pred.dtype, copy=False)
        return float((diff * diff).mean()), diff

    def _backward(self, diff):
        return diff * (2.0 / diff.size)


class CrossEntropyLoss(Loss):
    """Softmax cross-entropy over logits (batch, classes) and integer labels (batch,).

    Computed with a fused, stable log-softmax; the gradient is (softmax - onehot) / batch.
    """

    def _forward(self, logits, labels):
        self._check_labels(logits, labels)
        if get_array_module(logits) is not numpy:
            return self._fused_gpu_forward(logits, labels)
        self._check_label_range(logits, int(labels.min()), int(labels.max()))
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = numpy.exp(shifted)
        sum_exp = exp.sum(axis=1, keepdims=True)
        rows = numpy.arange(logits.shape[0])
        log_likelihood = shifted[rows, labels] - numpy.log(sum_exp[:, 0])
        return float(-log_likelihood.mean()), (exp, sum_exp, labels)

    def _fused_gpu_forward(self, logits, labels):
        """Loss and gradient in one GPU kernel, one thread per row (cupy would launch a kernel per step).

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
        kernel(logits, labels, numpy.int32(classes), logits.dtype.type(1.0 / batch), row_loss, grad)
        value = float(row_loss.sum()) / batch
        if math.isnan(value):
            self._check_label_range(logits, int(labels.min()), int(labels.max()))
        return value, grad

    def _backward(self, cache):
        if is_array(cache):  # the fused GPU forward already computed the gradient
            return cache
        exp, sum_exp, labels = cache
        grad = exp / sum_exp
        grad[get_array_module(grad).arange(grad.shape[0]), labels] -= 1.0
        grad *= 1.0 / grad.shape[0]
        return grad

    @staticmethod
    def _check_labels(logits, labels):
        if logits.ndim != 2:
            raise ValueError(f"CrossEntropyLoss expects logits of shape (batch, classes), got {tuple(logits.shape)}")
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise TypeError(f"CrossEntropyLoss expects integer class labels of shape (batch,), got dtype "
                            f"{labels.dtype} and shape {tuple(labels.shape)}; use labels.astype('int64')")

    @staticmethod
    def _check_label_range(logits, low: int, high: int):
        if low < 0 or high >= logits.shape[1]:
            raise ValueError(f"CrossEntropyLoss labels must lie in [0, {logits.shape[1]}) for "
                             f"{logits.shape[1]} classes, got values from {low} to {high}")


class BCEWithLogitsLoss(Loss):
    """Binary cross-entropy on logits: mean(softplus(z) - t·z), stable for any z; targets in [0, 1]."""

    def _forward(self, logits, target):
        if logits.shape != target.shape:
            raise ValueError(f"BCEWithLogitsLoss: logits shape {tuple(logits.shape)} differs from target shape {tuple(target.shape)}")
        xp = get_array_module(logits)
        target = target.astype(logits.dtype, copy=False)
        if bool(((target < 0) | (target > 1)).any()):
            raise ValueError(f"BCEWithLogitsLoss targets must lie in [0, 1], got values from "
                             f"{float(target.min())} to {float(target.max())}")
        softplus = xp.maximum(logits, 0) + xp.log1p(xp.exp(-xp.abs(logits)))
        value = float((softplus - target * logits).mean())
        return value, (logits, target)

    def _backward(self, cache):
        logits, target = cache
        xp = get_array_module(logits)
        sigmoid = xp.exp(-xp.logaddexp(0, -logits)).astype(logits.dtype, copy=False)
        return (sigmoid - target) * (1.0 / logits.size)
