"""Dropout: zero each input with probability p in training, scale the rest by 1/(1-p)."""
from __future__ import annotations

from mpiprop.network import rng
from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.checks import float_array
from mpiprop.network.layer import Layer


class Dropout(Layer):
    """Inverted dropout (Srivastava et al., 2014); the identity in eval mode.

    Masks come from the shared seeded generator of the input's array module
    (`mpiprop.network.manual_seed`), or from `generator` when given.
    """

    def __init__(self, p: float = 0.5, generator=None):
        super().__init__()
        if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout probability p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.generator = generator

    def forward(self, x: Array):
        float_array(x, "input of Dropout")
        if not self.training or self.p == 0.0:
            return x, None
        xp = get_array_module(x)
        generator = self.generator if self.generator is not None else rng.generator(xp)
        keep = generator.random(x.shape, dtype=x.dtype) >= self.p
        mask = keep * x.dtype.type(1.0 / (1.0 - self.p))
        return x * mask, mask

    def backward_input(self, dy: Array, mask) -> Array:
        return dy if mask is None else dy * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
