"""tensor_parallel_gpt: a `gpt(...)` Sequential in its tensor-parallel form, each layer kind split Megatron's way."""
from __future__ import annotations

import copy

from mpiprop.distributed.tensor_parallel.column_parallel_linear import ColumnParallelLinear
from mpiprop.distributed.tensor_parallel.head_parallel_attention import HeadParallelSelfAttention
from mpiprop.distributed.tensor_parallel.row_parallel_linear import RowParallelLinear
from mpiprop.distributed.tensor_parallel.sequence_parallel_layers import (
    SequenceParallelDropout, SequenceParallelLayerNorm, SequenceParallelTokenPositionEmbedding,
)
from mpiprop.distributed.tensor_parallel.split_layer import SplitLayer
from mpiprop.distributed.tensor_parallel.vocab_parallel_embedding import VocabParallelEmbedding
from mpiprop.distributed.tensor_parallel.vocab_parallel_head import VocabParallelTiedLinear
from mpiprop.distributed.tensor_parallel.group import require_group
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.layers.attention import CausalSelfAttention
from mpiprop.network.layers.dropout import Dropout
from mpiprop.network.layers.embedding import Embedding
from mpiprop.network.layers.layer import Layer
from mpiprop.network.layers.layernorm import LayerNorm
from mpiprop.network.layers.linear import Linear
from mpiprop.network.layers.recompute import Recompute
from mpiprop.network.layers.residual import Residual
from mpiprop.network.layers.sequential import Sequential
from mpiprop.network.layers.tied_head import TiedLinear
from mpiprop.network.layers.token_position_embedding import TokenPositionEmbedding


def tensor_parallel_gpt(model: Sequential, group: Communicator, *, sequence_parallel: bool = False) -> Sequential:
    """The tensor-parallel form of `model` (built by `gpt(...)`, the same on every rank) over `group`.

    Layer by layer: the token embedding's table by vocabulary shards (`VocabParallelEmbedding`,
    the vocabulary padded to a multiple of T), each attention by heads (`HeadParallelSelfAttention`),
    each MLP's Linear pairs column then row (`ColumnParallelLinear`, `RowParallelLinear`), the tied
    head on the embedding's shard (`VocabParallelTiedLinear`: this rank's shard of the logits, for
    `VocabParallelCrossEntropy`); a `Recompute` keeps wrapping its split layers. The rest (LayerNorms,
    position embedding, dropout) is shared with `model` and takes group rank 0's values, so every
    rank holds one model. Parameter names stay the single-process model's, so `full_state_dict`,
    `load_full_state_dict` and a `Pipeline`'s checkpoints join shares into whole arrays and cut
    them back. Collective over `group`.

    With `sequence_parallel` (Megatron's sequence parallelism), the layers between the split ones
    (LayerNorms, dropout, the residual sums, the positions) run on this rank's shard of the rows
    (the first axis, the batch) instead of all of them: the embedding and each split pair's output
    reduce-scatter instead of allreducing, each split layer's input is gathered (allgather), and the
    LayerNorms' parameter gradients are summed over the group. The numbers are the same; each rank
    normalises and adds 1/T of the rows, and pipeline stages pass each other their shards.

    Args:
        model: the whole GPT; group rank 0's values are used on every rank.
        group: the tensor-parallel Communicator (see `tensor_parallel_group`).
        sequence_parallel: cut the activation between the split layers by rows over the group.

    Returns:
        A Sequential with the same layers and parameter names, holding this rank's shares.

    Raises:
        TypeError: for a model that is not a Sequential or a group that is not a Communicator.
        ValueError: when the heads, the MLP width or the Linear pairs do not split over the group; with
            `sequence_parallel`, for a layer with parameters that it does not know how to run on a shard of the rows.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"tensor_parallel_gpt splits a network Sequential built by gpt(...), "
                        f"got {type(model).__name__}")
    require_group(group, "tensor_parallel_gpt")
    splitter = _Splitter(group, bool(sequence_parallel))
    split = Sequential(*[splitter.layer(layer) for layer in model])
    _broadcast_unsplit(split, group)
    return split


class _Splitter:
    """Each layer's tensor-parallel form; remembers the vocabulary-parallel embeddings for the tied heads."""

    def __init__(self, group: Communicator, sequence_parallel: bool):
        self.group, self.sequence_parallel = group, sequence_parallel
        self.embeddings: dict[int, VocabParallelEmbedding] = {}

    def layer(self, layer: Layer) -> Layer:
        if isinstance(layer, TokenPositionEmbedding):
            if self.sequence_parallel:
                return SequenceParallelTokenPositionEmbedding(layer, self._vocab_parallel(layer.wte))
            split = copy.copy(layer)
            split.wte = self._vocab_parallel(layer.wte)
            return split
        if isinstance(layer, Embedding):
            return self._vocab_parallel(layer)
        if isinstance(layer, TiedLinear):
            if id(layer.weight) not in self.embeddings:
                raise ValueError(f"{layer!r} shares the weight of an Embedding that comes after it in the model; "
                                 "tensor_parallel_gpt needs the embedding first, as gpt(...) builds it")
            return VocabParallelTiedLinear(self.embeddings[id(layer.weight)])
        if isinstance(layer, CausalSelfAttention):
            return HeadParallelSelfAttention(layer, self.group, sequence_parallel=self.sequence_parallel)
        if isinstance(layer, Residual):
            return Residual(*self._block(list(layer)))
        if isinstance(layer, Recompute):
            return Recompute(*[self.layer(inner) for inner in layer.layers])
        return self._on_shard(layer) if self.sequence_parallel else layer

    def _block(self, layers: list[Layer]) -> list[Layer]:
        """A residual branch's layers, its Linear layers paired column then row; between a pair the rows are whole."""
        linears = [index for index, layer in enumerate(layers) if type(layer) is Linear]
        if len(linears) % 2:
            raise ValueError(f"tensor_parallel_gpt pairs the Linear layers of a block column then row, but the block "
                             f"{[repr(layer) for layer in layers]} holds {len(linears)}; give it an even number")
        columns, rows = set(linears[0::2]), set(linears[1::2])
        split, inside_pair = [], False
        for index, layer in enumerate(layers):
            if index in columns:
                split.append(ColumnParallelLinear(layer, self.group, sequence_parallel=self.sequence_parallel))
            elif index in rows:
                split.append(RowParallelLinear(layer, self.group, sequence_parallel=self.sequence_parallel))
            else:
                split.append(layer if inside_pair else self.layer(layer))
            inside_pair = (inside_pair or index in columns) and index not in rows
        return split

    def _on_shard(self, layer: Layer) -> Layer:
        """`layer` as it runs on this rank's shard of the rows under sequence parallelism."""
        if isinstance(layer, LayerNorm):
            return SequenceParallelLayerNorm(layer, self.group)
        if isinstance(layer, Dropout):
            return SequenceParallelDropout(layer, self.group)
        if layer.parameters():
            raise ValueError(f"tensor_parallel_gpt with sequence_parallel runs the layers between the split ones on "
                             f"a shard of the rows, and does not know how to do that for {layer!r}, which has "
                             "parameters; pass sequence_parallel=False")
        return layer

    def _vocab_parallel(self, embedding: Embedding) -> VocabParallelEmbedding:
        split = VocabParallelEmbedding(embedding, self.group, sequence_parallel=self.sequence_parallel)
        self.embeddings[id(embedding.weight)] = split
        return split


def _broadcast_unsplit(model: Sequential, group: Communicator) -> None:
    """Group rank 0's values for the parameters and buffers every rank holds whole."""
    split_ids = {id(p) for layer in model.descendants() if isinstance(layer, SplitLayer)
                 for name, p in layer.named_parameters() if name in layer.parameter_splits()}
    for p in model.parameters():
        if id(p) not in split_ids:
            group.bcast(p.data)
    for _, buffer in model.named_buffers():
        group.bcast(buffer)
