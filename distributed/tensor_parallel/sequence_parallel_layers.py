"""The layers between the split ones under sequence parallelism: each runs on this rank's shard of the rows."""
from __future__ import annotations

from typing import Any, Callable

from mpiprop.distributed.tensor_parallel.sequence_parallel import gather_rows, shard_rows_window
from mpiprop.distributed.tensor_parallel.vocab_parallel_embedding import VocabParallelEmbedding
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.layers.dropout import Dropout
from mpiprop.network.layers.layernorm import LayerNorm
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.layers.token_position_embedding import TokenPositionEmbedding


class SequenceParallelLayerNorm(LayerNorm):
    """A LayerNorm on this rank's shard of the rows; its weight and bias stay whole and alike on every rank.

    Each rank's rows give part of the parameters' gradients: backward adds their sum over the
    group (one small allreduce), so every rank holds the whole model's gradients.

    Args:
        layer: the whole LayerNorm; its parameters are shared, not copied.
        group: the tensor-parallel Communicator.
    """

    def __init__(self, layer: LayerNorm, group: Communicator):
        vars(self).update(vars(layer))
        self.group = group

    def backward_weight(self, dy: Array, cache: Any) -> None:
        parameters = [p for p in (self.weight, self.bias) if p is not None]
        add_summed_over_group(self.group, parameters, lambda: LayerNorm.backward_weight(self, dy, cache))


class SequenceParallelDropout(Dropout):
    """A Dropout on this rank's shard of the rows that drops what one process would drop on the whole
    activation (it draws the whole mask from the shared stream and keeps its rows). Collective in training.

    Args:
        layer: the whole Dropout; its probability and random stream are shared, not copied.
        group: the tensor-parallel Communicator.
    """

    def __init__(self, layer: Dropout, group: Communicator):
        vars(self).update(vars(layer))
        self.group = group

    def forward(self, x: Array):
        if not self.training or self.p == 0.0:
            return super().forward(x)
        with shard_rows_window(x, self.group):
            return super().forward(x)


class SequenceParallelTokenPositionEmbedding(TokenPositionEmbedding):
    """GPT's input layer giving this rank's shard of the rows: the vocabulary-parallel lookup reduce-scattered
    (see `VocabParallelEmbedding`), plus the positions, then dropout on the shard.

    Backward gathers the whole output gradient once (one allgather) for both tables, so the
    position table's gradient is the whole batch's on every rank.

    Args:
        layer: the whole TokenPositionEmbedding; its position table and dropout stream are shared.
        wte: its token table as a sequence-parallel `VocabParallelEmbedding`.
    """

    def __init__(self, layer: TokenPositionEmbedding, wte: VocabParallelEmbedding):
        vars(self).update(vars(layer))
        self.wte = wte
        self.group = wte.group
        self.dropout = SequenceParallelDropout(layer.dropout, wte.group)

    def backward_weight(self, dy: Array, cache: Any) -> None:
        ids, positions, dropout_cache = cache
        whole = gather_rows(self.dropout.backward_input(dy, dropout_cache), self.group, ids.shape[0])
        self.wte.add_weight_grad(whole, ids)
        self.wpe.backward_weight(whole.sum(axis=0), positions)


def add_summed_over_group(group: Communicator, parameters: list[Parameter], accumulate: Callable[[], None]) -> None:
    """Run `accumulate`, which adds into the parameters' gradients, so that what it adds is summed over `group`.

    The gradients it adds are collected apart (from zero) and summed in one allreduce before they
    are added, so gradients accumulated before (earlier micro-batches) are not summed again.
    """
    kept = [p.grad for p in parameters]
    for p in parameters:
        p.grad = get_array_module(p.grad).zeros_like(p.grad)
    try:
        accumulate()
        added = [p.grad for p in parameters]
    finally:
        for p, grad in zip(parameters, kept):
            p.grad = grad
    xp = get_array_module(kept[0])
    summed = group.allreduce(xp.concatenate([grad.reshape(-1) for grad in added]))
    start = 0
    for p in parameters:
        p.grad += summed[start:start + p.grad.size].reshape(p.grad.shape)
        start += p.grad.size
