"""BatchNorm1d: normalise each feature over the batch, with running statistics for eval mode."""
from __future__ import annotations

import numpy

from mpiprop.network.backend import Array, module_for_device
from mpiprop.network.checks import float_array, float_dtype, non_negative_float, positive_int
from mpiprop.network.layers.layer import Layer
from mpiprop.network.layers.parameter import Parameter


class BatchNorm1d(Layer):
    """Batch normalisation (Ioffe & Szegedy, 2015) of inputs shaped (batch, features) or (batch, features, length).

    Training mode normalises each feature with the mean and biased variance over the batch (and
    the length) and updates `running_mean`/`running_var` (unbiased variance), as PyTorch does;
    eval mode normalises with the running statistics.

    Args:
        num_features: the features (channels) C.
        eps: added to the variance.
        momentum: weight of the new batch in the running statistics; None averages all batches
            so far alike (a cumulative average, counted in the buffer `num_batches_tracked`).
        affine: learn a scale `weight` and a shift `bias` per feature; False has no parameters.
        track_running_stats: keep running statistics; False has none and normalises with the
            batch's statistics in eval mode too.

    Raises:
        ValueError: for a non-positive num_features or a negative eps or momentum.
    """

    input_ranks: tuple[int, ...] = (2, 3)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, dtype=numpy.float32, device: str = "cpu"):
        super().__init__()
        name = type(self).__name__
        self.num_features = positive_int(num_features, f"{name} num_features")
        self.eps = non_negative_float(eps, f"{name} eps")
        self.momentum = None if momentum is None else non_negative_float(momentum, f"{name} momentum")
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        float_dtype(dtype, f"{name} dtype")
        xp = module_for_device(device)
        if self.affine:
            self.weight = Parameter(xp.ones(num_features, dtype=dtype))
            self.bias = Parameter(xp.zeros(num_features, dtype=dtype))
        self.buffer_names = ()
        if self.track_running_stats:
            self.running_mean = xp.zeros(num_features, dtype=dtype)
            self.running_var = xp.ones(num_features, dtype=dtype)
            self.buffer_names = ("running_mean", "running_var")
            if self.momentum is None:
                self.num_batches_tracked = xp.zeros((), dtype=numpy.int64)
                self.buffer_names += ("num_batches_tracked",)

    def forward(self, x: Array):
        self._check_input(x)
        axes, shape = _statistics_axes(x)
        batch_statistics = self.training or not self.track_running_stats
        if batch_statistics:
            mean, var = x.mean(axis=axes), x.var(axis=axes)
            if self.training and self.track_running_stats:
                self._update_running_statistics(mean, var, x.size // self.num_features)
        else:
            mean, var = self.running_mean, self.running_var
        inv_std = 1.0 / (var + self.eps) ** 0.5
        x_hat = (x - mean.reshape(shape)) * inv_std.reshape(shape)
        y = x_hat * self.weight.data.reshape(shape) + self.bias.data.reshape(shape) if self.affine else x_hat
        return y, (x_hat, inv_std, batch_statistics)

    def backward_input(self, dy: Array, cache) -> Array:
        x_hat, inv_std, batch_statistics = cache
        axes, shape = _statistics_axes(dy)
        g = dy * self.weight.data.reshape(shape) if self.affine else dy
        inv_std = inv_std.reshape(shape)
        if not batch_statistics:
            return g * inv_std
        return inv_std * (g - g.mean(axis=axes, keepdims=True)
                          - x_hat * (g * x_hat).mean(axis=axes, keepdims=True))

    def backward_weight(self, dy: Array, cache) -> None:
        if not self.affine:
            return
        axes, _ = _statistics_axes(dy)
        x_hat = cache[0]
        self.weight.grad += (dy * x_hat).sum(axis=axes)
        self.bias.grad += dy.sum(axis=axes)

    def _update_running_statistics(self, mean: Array, var: Array, count: int) -> None:
        unbiased = var * (count / (count - 1))
        if self.momentum is None:
            self.num_batches_tracked += 1
            factor = 1.0 / self.num_batches_tracked  # an array: no device sync on the GPU
        else:
            factor = self.momentum
        for running, batch in ((self.running_mean, mean), (self.running_var, unbiased)):
            running *= 1.0 - factor
            running += factor * batch

    def _check_input(self, x: Array) -> None:
        name = type(self).__name__
        float_array(x, f"input of {name}")
        if x.ndim not in self.input_ranks or x.shape[1] != self.num_features:
            raise ValueError(f"{self!r} expects input of shape {self._layouts()} but got {tuple(x.shape)}")
        if (self.training or not self.track_running_stats) and x.size // self.num_features < 2:
            raise ValueError(
                f"{name} normalising with batch statistics (training mode, or no running statistics) needs at "
                f"least 2 values per feature, got input of shape {tuple(x.shape)}; use a larger batch, "
                "drop_last=True, or model.eval() with track_running_stats=True"
            )

    def _layouts(self) -> str:
        c = self.num_features
        return " or ".join(f"(batch, {c}{', length' * (rank == 3)}{', height, width' * (rank == 4)})"
                           for rank in self.input_ranks)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")


def _statistics_axes(x: Array) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The axes statistics are taken over (all but the channel axis 1), and the shape a per-feature array
    takes to broadcast against x."""
    return (0,) + tuple(range(2, x.ndim)), (x.shape[1],) + (1,) * (x.ndim - 2)
