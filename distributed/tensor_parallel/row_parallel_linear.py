"""RowParallelLinear: a Linear whose input rows are split over the tensor-parallel ranks."""
from __future__ import annotations

from mpiprop.distributed.tensor_parallel.split_linear import SplitLinear
from mpiprop.network.backend import Array
from mpiprop.network.layers.linear_math import linear_forward, linear_input_grad


class RowParallelLinear(SplitLinear):
    """y = sum over ranks r of x_r @ weight[share r, :], then + bias once.

    Linear's math on this rank's rows, left through Megatron's "reduce from the region": the
    partial products summed over the group forward (one allreduce, before the bias, which every
    rank holds whole), the identity backward. The input is this rank's (..., in/T) share of the
    activation, as `ColumnParallelLinear` (and an elementwise activation) leaves it; the output is
    the whole (..., out) result, the same on every rank.

    Args:
        linear: the whole Linear; group rank 0's weights are used on every rank.
        group: the tensor-parallel Communicator (see `tensor_parallel_group`).
    """

    split_axis = 0
    bias_split = False

    def forward(self, x: Array) -> tuple[Array, Array]:
        self._check_input(x, self.in_features // self.group.size)
        y = self.group.allreduce(linear_forward(x, self.weight.data))
        if self.bias is not None:
            y += self.bias.data
        return y, x

    def backward_input(self, dy: Array, x: Array) -> Array:
        return linear_input_grad(dy, self.weight.data)
