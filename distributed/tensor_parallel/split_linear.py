"""SplitLinear: what the column- and row-parallel layers share, a slice of a whole Linear and its gathering."""
from __future__ import annotations

import numpy

from mpiprop.distributed.reliability.consistency import check_agreement
from mpiprop.distributed.tensor_parallel.split import Split
from mpiprop.distributed.tensor_parallel.split_layer import SplitLayer
from mpiprop.distributed.tensor_parallel.group import require_group
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import Array, device_of, get_array_module, to_numpy
from mpiprop.network.layers.linear import Linear
from mpiprop.network.layers.linear_math import linear_weight_grad_
from mpiprop.network.layers.parameter import Parameter


class SplitLinear(SplitLayer):
    """A Linear layer whose weight is split along `split_axis` over the ranks of `group`.

    Subclasses set `split_axis` (1: output columns, 0: input rows) and whether the bias is
    split with the columns (`bias_split`) or kept whole on every rank.

    Args:
        linear: the whole layer; group rank 0's weights are broadcast, so every rank slices the same matrix.
        group: the tensor-parallel Communicator (see `tensor_parallel_group`).
        sequence_parallel: whether the activation outside the split pair is cut by rows over the group
            (Megatron's sequence parallelism; see the subclasses for the collectives it changes).

    Raises:
        TypeError: when `linear` is not a Linear or `group` not a Communicator.
        ValueError: on every rank of `group`, when the ranks' layers differ in shape, bias or dtype; when the
            split dimension is not a multiple of the group size.
    """

    split_axis = 1
    bias_split = False

    def __init__(self, linear: Linear, group: Communicator, *, sequence_parallel: bool = False):
        super().__init__()
        if not isinstance(linear, Linear):
            raise TypeError(f"{type(self).__name__} is built from a network Linear, got {type(linear).__name__}")
        require_group(group, type(self).__name__)
        self.group = group
        self.sequence_parallel = bool(sequence_parallel)
        check_agreement(group, type(self).__name__, {"sequence_parallel": self.sequence_parallel,
            "in_features": linear.in_features, "out_features": linear.out_features,
            "bias": linear.bias is not None, "dtype": str(linear.weight.dtype)})
        self.in_features, self.out_features = linear.in_features, linear.out_features
        whole = linear.weight.shape[self.split_axis]
        if whole % group.size:
            side = "output columns" if self.split_axis == 1 else "input rows"
            raise ValueError(f"{type(self).__name__} splits the {whole} {side} of {linear!r} over {group.size} "
                             f"ranks, but {whole} is not a multiple of {group.size}; choose a width divisible by "
                             f"{group.size} or another tensor-parallel size")
        self.weight = Parameter(self._slice(group.bcast(linear.weight.data.copy()), self.split_axis))
        self.bias = None
        if linear.bias is not None:
            bias = group.bcast(linear.bias.data.copy())
            self.bias = Parameter(self._slice(bias, 0) if self.bias_split else bias)

    def parameter_splits(self) -> dict[str, Split]:
        """{"weight": Split, "bias": Split} for the parameters held as shares (a whole bias is not listed)."""
        splits = {"weight": Split(self.split_axis, (self.in_features, self.out_features), self.group.size)}
        if self.bias is not None and self.bias_split:
            splits["bias"] = Split(0, (self.out_features,), self.group.size)
        return splits

    def _slice(self, array: Array, axis: int) -> Array:
        """This rank's contiguous share of `array` along `axis`, as a copy."""
        share = array.shape[axis] // self.group.size
        index = [slice(None)] * array.ndim
        index[axis] = slice(self.group.rank * share, (self.group.rank + 1) * share)
        return array[tuple(index)].copy()

    def full_parameters(self, of: str = "data") -> dict[str, numpy.ndarray]:
        """The whole weight (and bias) on every rank, as host arrays, gathered from the shares. Collective.

        Args:
            of: "data" for the values, "grad" for the gradients.

        Returns:
            {"weight": (in, out) array, "bias": (out,) array} (no "bias" without one), as the
            whole Linear would hold them.
        """
        if of not in ("data", "grad"):
            raise ValueError(f"of must be 'data' or 'grad', got {of!r}")
        full = {"weight": self._gathered(getattr(self.weight, of), self.split_axis)}
        if self.bias is not None:
            bias = getattr(self.bias, of)
            full["bias"] = self._gathered(bias, 0) if self.bias_split else to_numpy(bias).copy()
        return full

    def shares_of(self, full: dict[str, Array]) -> dict[str, Array]:
        """This rank's shares of whole-layer arrays {"weight", "bias"} (entries absent from `full` are skipped).

        Raises:
            ValueError: when a shape is not the whole layer's.
        """
        whole = {"weight": (self.in_features, self.out_features), "bias": (self.out_features,)}
        split_axes = {"weight": self.split_axis, "bias": 0 if self.bias_split else None}
        shares = {}
        for name, value in full.items():
            if tuple(value.shape) != whole[name]:
                raise ValueError(f"{self!r} expects a whole {name} of shape {whole[name]}, got {tuple(value.shape)}")
            axis = split_axes[name]
            shares[name] = value if axis is None else self._slice(value, axis)
        return shares

    def _gathered(self, share: Array, axis: int) -> numpy.ndarray:
        shares = self.group.allgather_object(to_numpy(share))
        return numpy.concatenate(shares, axis=axis)

    def backward_weight(self, dy: Array, x: Array) -> None:
        """Linear's weight gradient of this rank's share: no communication in either split."""
        linear_weight_grad_(self.weight.grad, None if self.bias is None else self.bias.grad, x, dy)

    def _check_input(self, x: Array, width: int) -> None:
        if x.ndim < 2 or x.shape[-1] != width:
            leading = "batch" if x.ndim <= 2 else "batch, ..."
            raise ValueError(f"{self!r} expects input of shape ({leading}, {width}) but got {tuple(x.shape)}")
        if get_array_module(x) is not get_array_module(self.weight.data) or x.dtype != self.weight.dtype:
            raise TypeError(f"{self!r} has {self.weight.dtype} weights on {device_of(self.weight.data)} but got a "
                            f"{x.dtype} input on {device_of(x)}; move or cast the input, or call model.to(...)")

    def extra_repr(self) -> str:
        mode = ", sequence parallel" if self.sequence_parallel else ""
        return (f"{self.in_features}, {self.out_features}, bias={self.bias is not None}, "
                f"rank {self.group.rank} of {self.group.size}{mode}")
