"""TiedLinear: the language-model head logits = x @ embedding.weight.T, sharing the embedding's Parameter."""
from __future__ import annotations

from mpiprop.network.backend import Array
from mpiprop.network.checks import float_array, same_kind_as_weights
from mpiprop.network.compute.inplace import add_matmul_
from mpiprop.network.compute.matmul import matmul
from mpiprop.network.layers.embedding import Embedding
from mpiprop.network.layers.layer import Layer


class TiedLinear(Layer):
    """logits = x @ embedding.weight.T, no bias: inputs (..., embedding_dim) give (..., num_embeddings).

    `weight` is the embedding's Parameter itself (weight tying, as GPT-2 does), so its gradient
    sums the head's and the embedding's contributions. In a model holding both, `parameters()`
    lists it once (an optimizer steps it once) and `named_parameters()` under both positions,
    e.g. "0.weight" and "5.weight", the same object, as PyTorch's state_dict names a tied weight;
    `Sequential.backward`'s hooks report it final after the embedding, its first user.

    Args:
        embedding: the Embedding whose weight to share.

    Raises:
        TypeError: when `embedding` is not an Embedding.
    """

    def __init__(self, embedding: Embedding):
        super().__init__()
        if not isinstance(embedding, Embedding):
            raise TypeError(f"TiedLinear shares the weight of a network Embedding, got {type(embedding).__name__}")
        self.weight = embedding.weight
        self.num_embeddings, self.embedding_dim = embedding.num_embeddings, embedding.embedding_dim

    def forward(self, x: Array) -> tuple[Array, Array]:
        self._check_input(x)
        rows = x.reshape(-1, self.embedding_dim)
        logits = matmul(rows, self.weight.data, transpose_b=True)
        return logits.reshape(x.shape[:-1] + (self.num_embeddings,)), x

    def backward_input(self, dy: Array, x: Array) -> Array:
        self._check_output_grad(dy, x)
        return matmul(dy.reshape(-1, self.num_embeddings), self.weight.data).reshape(x.shape)

    def backward_weight(self, dy: Array, x: Array) -> None:
        self._check_output_grad(dy, x)
        add_matmul_(self.weight.grad, dy.reshape(-1, self.num_embeddings).T, x.reshape(-1, self.embedding_dim))

    def _check_input(self, x: Array) -> None:
        float_array(x, f"input of {self!r}")
        if x.ndim < 2 or x.shape[-1] != self.embedding_dim:
            raise ValueError(f"{self!r} expects input of shape (..., {self.embedding_dim}) with a batch dimension "
                             f"first, but got {tuple(x.shape)}; the head's width is its embedding's embedding_dim")
        same_kind_as_weights(x, self.weight.data, self)

    def _check_output_grad(self, dy: Array, x: Array) -> None:
        expected = tuple(x.shape[:-1]) + (self.num_embeddings,)
        if tuple(dy.shape) != expected:
            raise ValueError(f"{self!r} got an output gradient of shape {tuple(dy.shape)} but its output has shape "
                             f"{expected}; pass the gradient of the loss with respect to the logits")

    def extra_repr(self) -> str:
        return f"{self.embedding_dim}, {self.num_embeddings}, tied to Embedding({self.num_embeddings}, {self.embedding_dim})"
