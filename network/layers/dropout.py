"""Dropout: zero each input with probability p in training, scale the rest by 1/(1-p)."""
from __future__ import annotations

from mpiprop.network.compute import rng
from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.checks import float_array
from mpiprop.network.layers.layer import Layer


class Dropout(Layer):
    """Inverted dropout (Srivastava et al., 2014); the identity in eval mode.

    Masks come from `generator` when given, else from a random stream of this layer's own
    (`mpiprop.network.compute.rng.stream_generator`), seeded by `mpiprop.network.manual_seed` and the
    layer's place among the dropout layers made since: a model built after the same seed
    draws the same masks whether it runs in one process or as pipeline stages, and a batch
    cut into micro-batches gets the rows of the whole batch's mask (on numpy arrays). Inside
    `rng.row_window` (DataParallel's forward) a rank's rows get the global batch's mask rows.
    Two models built after the same seed draw the same masks, each from generators of its own.
    """

    def __init__(self, p: float = 0.5, generator=None):
        super().__init__()
        if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout probability p must be in [0, 1), got {p!r}")
        self.p = float(p)
        self.generator = generator
        self.stream = rng.new_stream()

    def forward(self, x: Array):
        float_array(x, "input of Dropout")
        if not self.training or self.p == 0.0:
            return x, None
        xp = get_array_module(x)
        generator = self.generator if self.generator is not None else rng.stream_generator(self.stream, xp)
        keep = rng.draw_rows(generator, x.shape, x.dtype) >= self.p
        mask = keep * x.dtype.type(1.0 / (1.0 - self.p))
        return x * mask, mask

    def backward_input(self, dy: Array, mask) -> Array:
        return dy if mask is None else dy * mask

    def extra_repr(self) -> str:
        return f"p={self.p}"
