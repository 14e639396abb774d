"""tensor_parallel_gpt: a `gpt(...)` Sequential in its tensor-parallel form, each layer kind split Megatron's way."""
from __future__ import annotations

import copy

from mpiprop.distributed.tensor_parallel.column_parallel_linear import ColumnParallelLinear
from mpiprop.distributed.tensor_parallel.head_parallel_attention import HeadParallelSelfAttention
from mpiprop.distributed.tensor_parallel.row_parallel_linear import RowParallelLinear
from mpiprop.distributed.tensor_parallel.split_layer import SplitLayer
from mpiprop.distributed.tensor_parallel.vocab_parallel_embedding import VocabParallelEmbedding
from mpiprop.distributed.tensor_parallel.vocab_parallel_head import VocabParallelTiedLinear
from mpiprop.distributed.tensor_parallel.group import require_group
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.layers.attention import CausalSelfAttention
from mpiprop.network.layers.embedding import Embedding
from mpiprop.network.layers.layer import Layer
from mpiprop.network.layers.linear import Linear
from mpiprop.network.layers.recompute import Recompute
from mpiprop.network.layers.residual import Residual
from mpiprop.network.layers.sequential import Sequential
from mpiprop.network.layers.tied_head import TiedLinear
from mpiprop.network.layers.token_position_embedding import TokenPositionEmbedding


def tensor_parallel_gpt(model: Sequential, group: Communicator) -> Sequential:
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

    Args:
        model: the whole GPT; group rank 0's values are used on every rank.
        group: the tensor-parallel Communicator (see `tensor_parallel_group`).

    Returns:
        A Sequential with the same layers and parameter names, holding this rank's shares.

    Raises:
        TypeError: for a model that is not a Sequential or a group that is not a Communicator.
        ValueError: when the heads, the MLP width or the Linear pairs do not split over the group.
    """
    if not isinstance(model, Sequential):
        raise TypeError(f"tensor_parallel_gpt splits a network Sequential built by gpt(...), "
                        f"got {type(model).__name__}")
    require_group(group, "tensor_parallel_gpt")
    embeddings: dict[int, VocabParallelEmbedding] = {}
    split = Sequential(*[_split_layer(layer, group, embeddings) for layer in model])
    _broadcast_unsplit(split, group)
    return split


def _split_layer(layer: Layer, group: Communicator, embeddings: dict[int, VocabParallelEmbedding]) -> Layer:
    if isinstance(layer, TokenPositionEmbedding):
        split = copy.copy(layer)
        split.wte = _vocab_parallel(layer.wte, group, embeddings)
        return split
    if isinstance(layer, Embedding):
        return _vocab_parallel(layer, group, embeddings)
    if isinstance(layer, TiedLinear):
        if id(layer.weight) not in embeddings:
            raise ValueError(f"{layer!r} shares the weight of an Embedding that comes after it in the model; "
                             "tensor_parallel_gpt needs the embedding first, as gpt(...) builds it")
        return VocabParallelTiedLinear(embeddings[id(layer.weight)])
    if isinstance(layer, CausalSelfAttention):
        return HeadParallelSelfAttention(layer, group)
    if isinstance(layer, Residual):
        return Residual(*_split_block(list(layer), group, embeddings))
    if isinstance(layer, Recompute):
        return Recompute(*[_split_layer(inner, group, embeddings) for inner in layer.layers])
    return layer


def _split_block(layers: list[Layer], group: Communicator,
                 embeddings: dict[int, VocabParallelEmbedding]) -> list[Layer]:
    """A residual branch's layers, its Linear layers paired column then row."""
    linears = [index for index, layer in enumerate(layers) if type(layer) is Linear]
    if len(linears) % 2:
        raise ValueError(f"tensor_parallel_gpt pairs the Linear layers of a block column then row, but the block "
                         f"{[repr(layer) for layer in layers]} holds {len(linears)}; give it an even number")
    kinds = {index: ColumnParallelLinear if order % 2 == 0 else RowParallelLinear
             for order, index in enumerate(linears)}
    return [kinds[index](layer, group) if index in kinds else _split_layer(layer, group, embeddings)
            for index, layer in enumerate(layers)]


def _vocab_parallel(embedding: Embedding, group: Communicator,
                    embeddings: dict[int, VocabParallelEmbedding]) -> VocabParallelEmbedding:
    split = VocabParallelEmbedding(embedding, group)
    embeddings[id(embedding.weight)] = split
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
