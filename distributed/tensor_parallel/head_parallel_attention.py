"""HeadParallelSelfAttention: causal self-attention whose heads are split over the tensor-parallel ranks."""
from __future__ import annotations

from typing import Any

from mpiprop.distributed.tensor_parallel.fused_column_parallel_linear import FusedColumnParallelLinear
from mpiprop.distributed.tensor_parallel.row_parallel_linear import RowParallelLinear
from mpiprop.distributed.tensor_parallel.sequence_parallel_layers import SequenceParallelDropout
from mpiprop.distributed.tensor_parallel.group import require_group
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import Array
from mpiprop.network.layers.attention import CausalSelfAttention
from mpiprop.network.layers.layer import Layer


class HeadParallelSelfAttention(CausalSelfAttention):
    """A `CausalSelfAttention` of H heads run by T ranks, H/T heads each, as Megatron splits it.

    `qkv` is column-parallel by heads (`FusedColumnParallelLinear`: rank r holds the q, k and v
    columns of its heads), the attention core runs on the rank's heads alone, and `proj` is
    row-parallel (`RowParallelLinear`: the input rows of those heads). The whole (B, T, C)
    activation comes in and goes out on every rank: forward sums the projection's partial
    products over the group (one allreduce, before its bias), backward sums the input gradient
    (one allreduce, after `qkv`). The layer's forward and backward are CausalSelfAttention's.
    Attention dropout draws the whole model's mask and keeps the rank's heads, so a seeded
    run drops what one process would.

    With `sequence_parallel`, this rank's shard of the rows (the first axis) comes in and goes out:
    `qkv` gathers the whole activation (one allgather), `proj` reduce-scatters its sums back into
    shards, and the output dropout drops the shard's rows of the whole activation's mask; backward
    runs the same collectives the other way.

    Args:
        attention: the whole layer; group rank 0's weights are used on every rank. Its `output_dropout`
            and random stream are shared, not copied.
        group: the tensor-parallel Communicator (see `tensor_parallel_group`).
        sequence_parallel: whether the activation comes and goes cut by rows over the group.

    Raises:
        TypeError: when `attention` is not a CausalSelfAttention or `group` not a Communicator.
        ValueError: when the number of heads is not a multiple of the group size.
    """

    def __init__(self, attention: CausalSelfAttention, group: Communicator, *, sequence_parallel: bool = False):
        Layer.__init__(self)
        if not isinstance(attention, CausalSelfAttention):
            raise TypeError(f"{type(self).__name__} is built from a network CausalSelfAttention, "
                            f"got {type(attention).__name__}")
        require_group(group, type(self).__name__)
        if attention.num_heads % group.size:
            raise ValueError(f"{attention!r} has {attention.num_heads} heads, which do not split over a "
                             f"tensor-parallel group of {group.size} ranks; choose a number of heads divisible by "
                             f"{group.size} or a tensor-parallel size that divides {attention.num_heads}")
        self.embed_dim, self.dropout = attention.embed_dim, attention.dropout
        self.total_heads, self.num_heads = attention.num_heads, attention.num_heads // group.size
        self.group = group
        self.qkv = FusedColumnParallelLinear(attention.qkv, group, blocks=3, sequence_parallel=sequence_parallel)
        self.proj = RowParallelLinear(attention.proj, group, sequence_parallel=sequence_parallel)
        self.attention_stream = attention.attention_stream
        self.output_dropout = SequenceParallelDropout(attention.output_dropout, group) if sequence_parallel \
            else attention.output_dropout

    def _attention_dropout_mask(self, heads_shape: tuple[int, ...], dtype: Any, x: Array) -> Array | None:
        batch, heads, time, size = heads_shape
        whole = super()._attention_dropout_mask((batch, self.total_heads, time, size), dtype, x)
        if whole is None:
            return None
        first = self.group.rank * self.num_heads
        return whole[:, first:first + self.num_heads]

    def extra_repr(self) -> str:
        return (f"{self.embed_dim}, num_heads={self.total_heads} ({self.num_heads} on rank {self.group.rank} of "
                f"{self.group.size}), dropout={self.dropout}, bias={self.qkv.bias is not None}")
