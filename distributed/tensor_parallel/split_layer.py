"""SplitLayer: a layer holding shares of parameters split over a tensor-parallel group, and their joining."""
from __future__ import annotations

import numpy

from mpiprop.distributed.tensor_parallel.split import Split, cut_share
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.backend import Array, to_numpy
from mpiprop.network.layers.layer import Layer
from mpiprop.network.training.shares import joined


class SplitLayer(Layer):
    """Base of the tensor-parallel layers: `group` holds the ranks, `parameter_splits` says which of the
    layer's own parameters are shares and how; the rest are held whole and alike on every rank.

    Subclasses set `self.group` and implement `parameter_splits`.
    """

    group: Communicator

    def parameter_splits(self) -> dict[str, Split]:
        """{parameter name within this layer: Split} for each parameter held as a share."""
        raise NotImplementedError(f"{type(self).__name__} must implement parameter_splits")

    def full_parameters(self, of: str = "data") -> dict[str, numpy.ndarray]:
        """Every parameter of this layer whole, as host arrays, the shares gathered over the group. Collective.

        Args:
            of: "data" for the values, "grad" for the gradients.

        Returns:
            {name: array} under this layer's parameter names, as the single-process layer holds them.

        Raises:
            ValueError: for another `of`.
        """
        if of not in ("data", "grad"):
            raise ValueError(f"of must be 'data' or 'grad', got {of!r}")
        splits = self.parameter_splits()
        full = {}
        for name, parameter in self.named_parameters():
            value = to_numpy(getattr(parameter, of)).copy()
            if name in splits:
                value = joined(self.group.allgather_object(value), splits[name].whole, splits[name].blocks)
            full[name] = value
        return full

    def shares_of(self, full: dict[str, Array]) -> dict[str, Array]:
        """This rank's shares of whole-layer arrays keyed by parameter name (entries of unsplit parameters as given).

        Raises:
            ValueError: when a split entry does not have the whole shape.
        """
        splits = self.parameter_splits()
        shares = {}
        for name, value in full.items():
            if name in splits and tuple(value.shape) != tuple(splits[name].whole):
                raise ValueError(f"{self!r} expects a whole {name} of shape {splits[name].whole}, "
                                 f"got {tuple(value.shape)}")
            shares[name] = cut_share(value, splits[name], self.group.rank) if name in splits else value
        return shares
