"""ColumnParallelLinear: a Linear whose output columns are split over the tensor-parallel ranks."""
from __future__ import annotations

from mpiprop.distributed.tensor_parallel.sequence_parallel import gather_rows, reduce_scatter_rows
from mpiprop.distributed.tensor_parallel.split_linear import SplitLinear
from mpiprop.network.backend import Array
from mpiprop.network.layers.linear_math import linear_forward, linear_input_grad


class ColumnParallelLinear(SplitLinear):
    """y_r = x @ weight[:, share r] + bias[share r]: each of T ranks computes out/T of the outputs.

    Linear's math on this rank's columns, entered through Megatron's "copy to the region": the
    identity forward, the input gradient summed over the group backward (one allreduce). The input
    is the whole (..., in) activation, the same on every rank; the output is this rank's (..., out/T)
    share, which is what `RowParallelLinear` takes (with an elementwise activation between them).

    With `sequence_parallel`, the input is this rank's shard of the rows (the first axis) instead:
    forward gathers the whole activation (one allgather), backward sums the input gradient and
    hands each rank its shard's rows (one reduce-scatter).

    Args:
        linear: the whole Linear; group rank 0's weights are used on every rank.
        group: the tensor-parallel Communicator (see `tensor_parallel_group`).
        sequence_parallel: whether the input comes cut by rows over the group.
    """

    split_axis = 1
    bias_split = True

    def forward(self, x: Array) -> tuple[Array, Array]:
        self._check_input(x, self.in_features)
        if self.sequence_parallel:
            x = gather_rows(x, self.group)
        return linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data), x

    def backward_input(self, dy: Array, x: Array) -> Array:
        dx = linear_input_grad(dy, self.weight.data)
        return reduce_scatter_rows(dx, self.group) if self.sequence_parallel else self.group.allreduce(dx)
