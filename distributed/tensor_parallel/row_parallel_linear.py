"""RowParallelLinear: a Linear whose input rows are split over the tensor-parallel ranks."""
from __future__ import annotations

from mpiprop.distributed.tensor_parallel.split_linear import SplitLinear
from mpiprop.network.backend import Array
from mpiprop.network.compute.inplace import add_matmul_
from mpiprop.network.compute.matmul import matmul


class RowParallelLinear(SplitLinear):
    """y = sum over ranks r of x_r @ weight[share r, :], then + bias once.

    The input is this rank's (batch, in/T) share of the activation, as `ColumnParallelLinear`
    (and an elementwise activation) leaves it; the output is the whole (batch, out) result,
    the same on every rank. Forward sums the partial products over the group (one allreduce)
    before adding the bias, which every rank holds whole; backward needs no communication.

    Args:
        linear: the whole Linear; group rank 0's weights are used on every rank.
        group: the tensor-parallel Communicator (see `tensor_parallel_group`).
    """

    split_axis = 0
    bias_split = False

    def forward(self, x: Array) -> tuple[Array, Array]:
        self._check_input(x, self.in_features // self.group.size)
        y = self.group.allreduce(matmul(x.reshape(-1, x.shape[-1]), self.weight.data))
        if self.bias is not None:
            y += self.bias.data
        return y.reshape(x.shape[:-1] + (y.shape[-1],)), x

    def backward_input(self, dy: Array, x: Array) -> Array:
        return matmul(dy.reshape(-1, dy.shape[-1]), self.weight.data, transpose_b=True).reshape(x.shape)

    def backward_weight(self, dy: Array, x: Array) -> None:
        dy = dy.reshape(-1, dy.shape[-1])
        add_matmul_(self.weight.grad, x.reshape(-1, x.shape[-1]).T, dy)
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=0)
