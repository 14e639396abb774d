"""VocabParallelCrossEntropy: softmax cross-entropy of logits whose vocabulary is split over tensor-parallel ranks."""
from __future__ import annotations

from typing import NamedTuple

import numpy

from mpiprop.distributed.tensor_parallel.group import require_group
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.layers.losses import Loss


class ShardCache(NamedTuple):
    """What the gradient needs: this rank's exp(logits - max), the group's sums, where the targets fall."""

    exp_shifted: Array
    sum_exp: Array
    target_column: Array
    target_here: Array
    kept: Array
    shape: tuple[int, ...]


class VocabParallelCrossEntropy(Loss):
    """Cross-entropy of logits (..., V) held as vocabulary shards (..., V_r), one per rank of `group` in
    rank order (as `VocabParallelTiedLinear` gives them), against target ids (...), never gathering the
    V-wide logits.

    Per row: a maximum over the group (allreduce "max"), then one allreduce of two sums, the sum
    of exp(z - max) and the target's z - max (from the rank holding it), so that
    loss = log(sum) - (z_target - max), the same value on every rank. Backward gives each rank
    its shard of the gradient, softmax(z) - onehot(target), with no communication. Rows whose
    target is `ignore_index` count neither in the loss nor in the mean, as in
    `torch.nn.functional.cross_entropy`; with logits (B, T, V) and ids (B, T) it computes what
    `NextTokenLoss` does on the whole logits.

    Args:
        group: the tensor-parallel Communicator over which the vocabulary is split.
        ignore_index: rows with this target id are left out.
        reduction: "mean" (over the rows kept), "sum" or "none" (one loss per row, of the targets' shape).

    Raises:
        TypeError: for a group that is not a Communicator or an ignore_index that is not an integer.
        ValueError: for another reduction.
    """

    def __init__(self, group: Communicator, ignore_index: int = -100, reduction: str = "mean"):
        super().__init__(reduction)
        require_group(group, "VocabParallelCrossEntropy")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, numpy.integer)):
            raise TypeError(f"VocabParallelCrossEntropy ignore_index must be an integer, got {ignore_index!r}")
        self.group = group
        self.ignore_index = int(ignore_index)

    def denominator(self, target: Array) -> float:
        """What "mean" divides the summed losses by: the number of targets other than `ignore_index`."""
        return float((target != self.ignore_index).sum())

    def _losses(self, logits: Array, target: Array) -> tuple[Array, float, ShardCache]:
        xp = get_array_module(logits)
        start, vocab = self._shard_start_and_vocab(logits.shape[-1])
        labels = self._check_targets(logits, target, vocab)
        rows = logits.reshape(labels.size, logits.shape[-1])
        kept = labels != self.ignore_index
        column = labels - start
        here = kept & (column >= 0) & (column < rows.shape[1])
        column = xp.where(here, column, 0)
        row_max = rows.max(axis=1) if rows.shape[1] else xp.full(rows.shape[0], -numpy.inf, dtype=rows.dtype)
        row_max = self.group.allreduce(xp.ascontiguousarray(row_max), "max")
        exp_shifted = xp.exp(rows - row_max[:, None])
        sums = xp.zeros((2, rows.shape[0]), dtype=rows.dtype)
        sums[0] = exp_shifted.sum(axis=1)
        if rows.shape[1]:
            sums[1] = xp.where(here, rows[xp.arange(rows.shape[0]), column] - row_max, 0)
        self.group.allreduce(sums)
        losses = xp.where(kept, xp.log(sums[0]) - sums[1], 0)
        if self.reduction == "none":
            losses = losses.reshape(target.shape)
        cache = ShardCache(exp_shifted, sums[0], column, here, kept, tuple(logits.shape))
        return losses, int(kept.sum()), cache

    def _gradient(self, cache: ShardCache) -> Array:
        xp = get_array_module(cache.exp_shifted)
        grad = cache.exp_shifted / cache.sum_exp[:, None]
        rows = xp.flatnonzero(cache.target_here)
        grad[rows, cache.target_column[rows]] -= 1
        grad *= cache.kept[:, None]
        return grad.reshape(cache.shape)

    def _shard_start_and_vocab(self, width: int) -> tuple[int, int]:
        """The first id of this rank's shard and the whole vocabulary, from every rank's shard width."""
        widths = self.group.allgather_object(int(width))
        return sum(widths[:self.group.rank]), sum(widths)

    def _check_targets(self, logits: Array, target: Array, vocab: int) -> Array:
        if target.dtype.kind not in "iu" or tuple(target.shape) != tuple(logits.shape[:-1]):
            raise ValueError(f"VocabParallelCrossEntropy expects integer target ids of shape "
                             f"{tuple(logits.shape[:-1])} for logits shards of shape {tuple(logits.shape)}, got "
                             f"{target.dtype} ids of shape {tuple(target.shape)}")
        labels = target.reshape(-1)
        kept = labels[labels != self.ignore_index]
        if kept.size and (int(kept.min()) < 0 or int(kept.max()) >= vocab):
            raise ValueError(f"VocabParallelCrossEntropy got target ids from {int(kept.min())} to {int(kept.max())} "
                             f"but the vocabulary has {vocab} ids; ids must lie in [0, {vocab - 1}] "
                             f"or equal ignore_index={self.ignore_index}")
        return labels

    def __repr__(self) -> str:
        return (f"VocabParallelCrossEntropy(ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"rank {self.group.rank} of {self.group.size})")
