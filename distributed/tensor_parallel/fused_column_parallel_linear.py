"""FusedColumnParallelLinear: a column-parallel Linear whose outputs are several fused blocks, each split on its own."""
from __future__ import annotations

import numpy

from mpiprop.distributed.tensor_parallel.column_parallel_linear import ColumnParallelLinear
from mpiprop.distributed.tensor_parallel.split import Split, cut_share
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import Array, to_numpy
from mpiprop.network.layers.linear import Linear
from mpiprop.network.training.shares import joined


class FusedColumnParallelLinear(ColumnParallelLinear):
    """A ColumnParallelLinear for an output laid out as `blocks` equal blocks, such as attention's fused
    [q | k | v] projection: rank r holds columns r of every block, side by side ([q_r | k_r | v_r]),
    so its output is the fused projection of its own heads.

    Args:
        linear: the whole Linear; group rank 0's weights are used on every rank.
        group: the tensor-parallel Communicator (see `tensor_parallel_group`).
        blocks: how many blocks the output columns hold (3 for q, k and v).
        sequence_parallel: whether the input comes cut by rows over the group (see ColumnParallelLinear).

    Raises:
        ValueError: when the output width is not a multiple of blocks x ranks.
    """

    def __init__(self, linear: Linear, group: Communicator, blocks: int = 3, *, sequence_parallel: bool = False):
        self.blocks = blocks
        width = getattr(linear, "out_features", 0)
        if isinstance(group, Communicator) and width % (blocks * group.size):
            raise ValueError(f"{type(self).__name__} splits each of the {blocks} blocks of the {width} output columns "
                             f"of {linear!r} over {group.size} ranks, but {width // blocks} is not a multiple of "
                             f"{group.size}; choose a width divisible by {blocks * group.size}")
        super().__init__(linear, group, sequence_parallel=sequence_parallel)

    def parameter_splits(self) -> dict[str, Split]:
        return {name: Split(split.axis, split.whole, split.ranks, self.blocks)
                for name, split in super().parameter_splits().items()}

    def _slice(self, array: Array, axis: int) -> Array:
        return cut_share(array, Split(axis, tuple(array.shape), self.group.size, self.blocks), self.group.rank)

    def _gathered(self, share: Array, axis: int) -> numpy.ndarray:
        whole = list(share.shape)
        whole[axis] *= self.group.size
        return joined(self.group.allgather_object(to_numpy(share)), tuple(whole), self.blocks)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, blocks={self.blocks}"
