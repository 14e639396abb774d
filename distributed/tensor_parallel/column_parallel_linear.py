"""ColumnParallelLinear: a Linear whose output columns are split over the tensor-parallel ranks."""
from __future__ import annotations

from mpiprop.distributed.tensor_parallel.split_linear import SplitLinear
from mpiprop.network.backend import Array
from mpiprop.network.compute.inplace import add_matmul_
from mpiprop.network.compute.matmul import matmul


class ColumnParallelLinear(SplitLinear):
    """y_r = x @ weight[:, share r] + bias[share r]: each of T ranks computes out/T of the outputs.

    The input is the whole (batch, in) activation, the same on every rank; the output is this
    rank's (batch, out/T) share, which is what `RowParallelLinear` takes (with an elementwise
    activation between them). Forward needs no communication; backward sums the input
    gradient over the group (one allreduce).

    Args:
        linear: the whole Linear; group rank 0's weights are used on every rank.
        group: the tensor-parallel Communicator (see `tensor_parallel_group`).
    """

    split_axis = 1
    bias_split = True

    def forward(self, x: Array) -> tuple[Array, Array]:
        self._check_input(x, self.in_features)
        y = matmul(x.reshape(-1, x.shape[-1]), self.weight.data)
        if self.bias is not None:
            y += self.bias.data
        return y.reshape(x.shape[:-1] + (y.shape[-1],)), x

    def backward_input(self, dy: Array, x: Array) -> Array:
        dx = matmul(dy.reshape(-1, dy.shape[-1]), self.weight.data, transpose_b=True)
        return self.group.allreduce(dx).reshape(x.shape)

    def backward_weight(self, dy: Array, x: Array) -> None:
        dy = dy.reshape(-1, dy.shape[-1])
        add_matmul_(self.weight.grad, x.reshape(-1, x.shape[-1]).T, dy)
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=0)
