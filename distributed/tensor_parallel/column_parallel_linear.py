"""ColumnParallelLinear: a Linear whose output columns are split over the tensor-parallel ranks."""
from __future__ import annotations

from mpiprop.distributed.tensor_parallel.split_linear import SplitLinear
from mpiprop.network.backend import Array
from mpiprop.network.layers.linear_math import linear_forward, linear_input_grad


class ColumnParallelLinear(SplitLinear):
    """y_r = x @ weight[:, share r] + bias[share r]: each of T ranks computes out/T of the outputs.

    Linear's math on this rank's columns, entered through Megatron's "copy to the region": the
    identity forward, the input gradient summed over the group backward (one allreduce). The input
    is the whole (..., in) activation, the same on every rank; the output is this rank's (..., out/T)
    share, which is what `RowParallelLinear` takes (with an elementwise activation between them).

    Args:
        linear: the whole Linear; group rank 0's weights are used on every rank.
        group: the tensor-parallel Communicator (see `tensor_parallel_group`).
    """

    split_axis = 1
    bias_split = True

    def forward(self, x: Array) -> tuple[Array, Array]:
        self._check_input(x, self.in_features)
        return linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data), x

    def backward_input(self, dy: Array, x: Array) -> Array:
        return self.group.allreduce(linear_input_grad(dy, self.weight.data))
