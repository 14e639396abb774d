"""BatchNorm1d: normalise each feature over the batch, with running statistics for eval mode."""
from __future__ import annotations

import numpy

from mpiprop.network.backend import Array, module_for_device
from mpiprop.network.checks import float_array, float_dtype, non_negative_float, positive_int
from mpiprop.network.layer import Layer
from mpiprop.network.parameter import Parameter


class BatchNorm1d(Layer):
    """Batch normalisation (Ioffe & Szegedy, 2015) of inputs shaped (batch, features).

    Training mode normalises with the batch mean and biased variance and updates
    `running_mean`/`running_var` (unbiased variance) with `momentum`, as PyTorch does;
    eval mode normalises with the running statistics.
    """

    buffer_names = ("running_mean", "running_var")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, *,
                 dtype=numpy.float32, device: str = "cpu"):
        super().__init__()
        self.num_features = positive_int(num_features, "BatchNorm1d num_features")
        self.eps = non_negative_float(eps, "BatchNorm1d eps")
        self.momentum = non_negative_float(momentum, "BatchNorm1d momentum")
        float_dtype(dtype, "BatchNorm1d dtype")
        xp = module_for_device(device)
        self.weight = Parameter(xp.ones(num_features, dtype=dtype))
        self.bias = Parameter(xp.zeros(num_features, dtype=dtype))
        self.running_mean = xp.zeros(num_features, dtype=dtype)
        self.running_var = xp.ones(num_features, dtype=dtype)

    def forward(self, x: Array):
        self._check_input(x)
        if self.training:
            mean, var = x.mean(axis=0), x.var(axis=0)
            self._update_running_statistics(mean, var, x.shape[0])
        else:
            mean, var = self.running_mean, self.running_var
        inv_std = 1.0 / (var + self.eps) ** 0.5
        x_hat = (x - mean) * inv_std
        return x_hat * self.weight.data + self.bias.data, (x_hat, inv_std, self.training)

    def backward_input(self, dy: Array, cache) -> Array:
        x_hat, inv_std, batch_statistics = cache
        g = dy * self.weight.data
        if not batch_statistics:
            return g * inv_std
        return inv_std * (g - g.mean(axis=0) - x_hat * (g * x_hat).mean(axis=0))

    def backward_weight(self, dy: Array, cache) -> None:
        x_hat = cache[0]
        self.weight.grad += (dy * x_hat).sum(axis=0)
        self.bias.grad += dy.sum(axis=0)

    def _update_running_statistics(self, mean: Array, var: Array, batch: int) -> None:
        unbiased = var * (batch / (batch - 1))
        self.running_mean *= 1.0 - self.momentum
        self.running_mean += self.momentum * mean
        self.running_var *= 1.0 - self.momentum
        self.running_var += self.momentum * unbiased

    def _check_input(self, x: Array) -> None:
        float_array(x, "input of BatchNorm1d")
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{self!r} expects input of shape (batch, {self.num_features}) but got {tuple(x.shape)}")
        if self.training and x.shape[0] < 2:
            raise ValueError(
                f"BatchNorm1d in training mode needs at least 2 samples per batch, got {x.shape[0]}; "
                "use a larger batch, drop_last=True, or model.eval()"
            )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
