"""TokenPositionEmbedding: GPT's input layer, token vectors plus learnt position vectors, then dropout."""
from __future__ import annotations

from typing import Any

import numpy

from mpiprop.network.backend import Array, get_array_module, is_array
from mpiprop.network.checks import positive_int
from mpiprop.network.layers.dropout import Dropout
from mpiprop.network.layers.embedding import Embedding
from mpiprop.network.layers.layer import Layer


class TokenPositionEmbedding(Layer):
    """x[b, t] = wte[ids[b, t]] + wpe[t], then dropout: ids (B, T) give vectors (B, T, C).

    The children `wte` (vocab_size, C) and `wpe` (context_length, C) are `Embedding`s, so a
    language-model head can share `wte`'s weight (`TiedLinear(layer.wte)`). The input is a
    lookup: backward returns None, so this layer comes first in a model.

    Args:
        vocab_size: number of token ids.
        context_length: the longest sequence, the number of positions.
        embed_dim: C, the width of each vector.
        dropout: probability of dropping an element of the sum in training.
        dtype: parameter dtype (float32 by default).
        device: "cpu" (numpy) or "cuda" (cupy).
        generator: numpy Generator for the initial values; defaults to the seeded shared one.
    """

    def __init__(self, vocab_size: int, context_length: int, embed_dim: int, dropout: float = 0.0, *,
                 dtype=numpy.float32, device: str = "cpu", generator=None):
        super().__init__()
        self.context_length = positive_int(context_length, "TokenPositionEmbedding context_length")
        self.wte = Embedding(vocab_size, embed_dim, dtype=dtype, device=device, generator=generator)
        self.wpe = Embedding(context_length, embed_dim, dtype=dtype, device=device, generator=generator)
        self.dropout = Dropout(dropout)

    def forward(self, ids: Array) -> tuple[Array, Any]:
        self._check_ids(ids)
        positions = get_array_module(ids).arange(ids.shape[1])
        tokens, _ = self.wte.forward(ids)
        x, dropout_cache = self.dropout.forward(tokens + self.wpe.forward(positions)[0])
        return x, (ids, positions, dropout_cache)

    def backward_input(self, dy: Array, cache: Any) -> None:
        """None: integer ids have no gradient."""
        return None

    def backward_weight(self, dy: Array, cache: Any) -> None:
        ids, positions, dropout_cache = cache
        expected = tuple(ids.shape) + (self.wte.embedding_dim,)
        if tuple(dy.shape) != expected:
            raise ValueError(f"{self!r} got an output gradient of shape {tuple(dy.shape)} but its output has shape "
                             f"{expected}; pass the gradient of the loss with respect to the output")
        dx = self.dropout.backward_input(dy, dropout_cache)
        self.wte.backward_weight(dx, ids)
        self.wpe.backward_weight(dx.sum(axis=0), positions)

    def _check_ids(self, ids: Array) -> None:
        if not is_array(ids) or ids.ndim != 2:
            raise ValueError(f"{self!r} expects token ids of shape (batch, time), got "
                             f"{type(ids).__name__} of shape {tuple(getattr(ids, 'shape', ()))}")
        if ids.shape[1] > self.context_length:
            raise ValueError(f"{self!r} got sequences of {ids.shape[1]} tokens but the context holds "
                             f"{self.context_length}; keep the last {self.context_length} tokens "
                             f"(ids[:, -{self.context_length}:]) or build the model with a longer context_length")

    def extra_repr(self) -> str:
        return (f"vocab_size={self.wte.num_embeddings}, context_length={self.context_length}, "
                f"embed_dim={self.wte.embedding_dim}, dropout={self.dropout.p}")
