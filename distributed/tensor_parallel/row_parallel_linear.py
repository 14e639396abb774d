"""RowParallelLinear: a Linear whose input rows are split over the tensor-parallel ranks."""
from __future__ import annotations

from mpiprop.distributed.tensor_parallel.sequence_parallel import gather_rows, reduce_scatter_rows
from mpiprop.distributed.tensor_parallel.split_linear import SplitLinear
from mpiprop.network.backend import Array
from mpiprop.network.layers.linear_math import linear_forward, linear_input_grad, linear_weight_grad_


class RowParallelCache:
    """The input share, and the whole output gradient once gathered (sequence parallelism gathers it once for
    both halves of backward)."""

    def __init__(self, x: Array):
        self.x = x
        self.whole_output_grad: Array | None = None


class RowParallelLinear(SplitLinear):
    """y = sum over ranks r of x_r @ weight[share r, :], then + bias once.

    Linear's math on this rank's rows, left through Megatron's "reduce from the region": the
    partial products summed over the group forward (one allreduce, before the bias, which every
    rank holds whole), the identity backward. The input is this rank's (..., in/T) share of the
    activation, as `ColumnParallelLinear` (and an elementwise activation) leaves it; the output is
    the whole (..., out) result, the same on every rank.

    With `sequence_parallel`, the output is this rank's shard of the rows (the first axis) instead:
    forward sums the partial products and hands each rank its shard (one reduce-scatter), backward
    gathers the whole output gradient (one allgather, shared by both halves of backward).

    Args:
        linear: the whole Linear; group rank 0's weights are used on every rank.
        group: the tensor-parallel Communicator (see `tensor_parallel_group`).
        sequence_parallel: whether the output leaves cut by rows over the group.
    """

    split_axis = 0
    bias_split = False

    def forward(self, x: Array) -> tuple[Array, RowParallelCache]:
        self._check_input(x, self.in_features // self.group.size)
        partial = linear_forward(x, self.weight.data)
        y = reduce_scatter_rows(partial, self.group) if self.sequence_parallel else self.group.allreduce(partial)
        if self.bias is not None:
            y += self.bias.data
        return y, RowParallelCache(x)

    def backward_input(self, dy: Array, cache: RowParallelCache) -> Array:
        return linear_input_grad(self._whole_output_grad(dy, cache), self.weight.data)

    def backward_weight(self, dy: Array, cache: RowParallelCache) -> None:
        """Linear's weight gradient of this rank's share, and the whole bias's gradient (from every row)."""
        linear_weight_grad_(self.weight.grad, None if self.bias is None else self.bias.grad, cache.x,
                            self._whole_output_grad(dy, cache))

    def _whole_output_grad(self, dy: Array, cache: RowParallelCache) -> Array:
        if not self.sequence_parallel:
            return dy
        if cache.whole_output_grad is None:
            cache.whole_output_grad = gather_rows(dy, self.group, cache.x.shape[0])  # the input holds every row
        return cache.whole_output_grad
