"""Embedding: a lookup table from integer ids to learnt vectors, weight of shape (num_embeddings, embedding_dim)."""
from __future__ import annotations

import numpy

from mpiprop.network.backend import Array, get_array_module, is_array, module_for_device
from mpiprop.network.checks import float_dtype, positive_int, same_array_module
from mpiprop.network.layers import init
from mpiprop.network.layers.layer import Layer
from mpiprop.network.layers.parameter import Parameter


class Embedding(Layer):
    """y = weight[ids]: integer ids of any shape (...) give vectors of shape (..., embedding_dim).

    The input is a lookup, not a differentiable value, so `backward` returns None: put an
    embedding first in a Sequential (whose backward then returns None as the input gradient),
    or train with `Sequential.backward(dy, input_grad=False)`. The weight gradient is a
    scatter-add: an id used several times in a batch receives the sum of their gradients.

    Args:
        num_embeddings: number of ids (the vocabulary size).
        embedding_dim: width of each vector.
        padding_idx: an id whose vector starts at zero and never receives a gradient, as in
            PyTorch (negative values count from the end); None for no such id.
        dtype: parameter dtype (float32 by default).
        device: "cpu" (numpy) or "cuda" (cupy).
        generator: numpy Generator for the initial values; defaults to the seeded shared one.

    The weight starts as N(0, 1), PyTorch's default.

    Raises:
        ValueError: for a padding_idx outside [-num_embeddings, num_embeddings).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, *,
                 dtype=numpy.float32, device: str = "cpu", generator=None):
        super().__init__()
        self.num_embeddings = positive_int(num_embeddings, "Embedding num_embeddings")
        self.embedding_dim = positive_int(embedding_dim, "Embedding embedding_dim")
        self.padding_idx = _padding_index(padding_idx, self.num_embeddings)
        float_dtype(dtype, "Embedding dtype")
        xp = module_for_device(device)
        self.weight = init.normal_(Parameter(xp.empty((num_embeddings, embedding_dim), dtype=dtype)),
                                   0.0, 1.0, generator)
        if self.padding_idx is not None:
            self.weight.data[self.padding_idx] = 0

    def forward(self, ids: Array) -> tuple[Array, Array]:
        self._check_ids(ids)
        return self.weight.data[ids], ids

    def backward_input(self, dy: Array, ids: Array) -> None:
        """None: integer ids have no gradient."""
        self._check_output_grad(dy, ids)
        return None

    def backward_weight(self, dy: Array, ids: Array) -> None:
        self._check_output_grad(dy, ids)
        ids = ids.reshape(-1)
        dy = dy.reshape(-1, self.embedding_dim)
        if self.padding_idx is not None:
            kept = ids != self.padding_idx
            ids, dy = ids[kept], dy[kept]
        scatter_add_rows_(self.weight.grad, ids, dy)

    def _check_ids(self, ids: Array) -> None:
        if not is_array(ids):
            raise TypeError(f"{self!r} input must be a numpy or cupy array of integer ids, got {type(ids).__name__}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"{self!r} expects integer ids but got dtype {ids.dtype} of shape {tuple(ids.shape)}; "
                            "pass token ids as integers, e.g. ids.astype('int64')")
        same_array_module(ids, self.weight.data, self)
        if ids.size == 0:
            return
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= self.num_embeddings:
            raise ValueError(f"{self!r} got ids from {low} to {high} but has num_embeddings={self.num_embeddings}, "
                             f"so ids must lie in [0, {self.num_embeddings - 1}]; check the tokenizer's vocabulary "
                             f"size or build Embedding({high + 1}, {self.embedding_dim}) or larger")

    def _check_output_grad(self, dy: Array, ids: Array) -> None:
        expected = tuple(ids.shape) + (self.embedding_dim,)
        if tuple(dy.shape) != expected:
            raise ValueError(f"{self!r} got an output gradient of shape {tuple(dy.shape)} but its output has shape "
                             f"{expected}; pass the gradient of the loss with respect to the output")

    def extra_repr(self) -> str:
        padding = "" if self.padding_idx is None else f", padding_idx={self.padding_idx}"
        return f"{self.num_embeddings}, {self.embedding_dim}{padding}"


def scatter_add_rows_(out: Array, rows: Array, values: Array) -> None:
    """out[rows[i]] += values[i] for every i, repeated rows accumulating.

    numpy: the sum over repeats is one sparse product (a 0/1 matrix from each distinct row to
    the positions holding it, times `values`), 2 to 10 times faster than `numpy.add.at`;
    cupy adds atomically with `add.at`.
    """
    xp = get_array_module(out)
    if rows.size == 0:
        return
    if xp is not numpy:
        xp.add.at(out, rows, values.astype(out.dtype, copy=False))
        return
    import scipy.sparse  # imported on first use: it is heavier than the rest of network
    order = numpy.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    first = numpy.concatenate(([True], sorted_rows[1:] != sorted_rows[:-1]))
    starts = numpy.append(numpy.flatnonzero(first), rows.size)
    gather = scipy.sparse.csr_matrix((numpy.ones(rows.size, dtype=values.dtype), order, starts),
                                     shape=(starts.size - 1, rows.size))
    out[sorted_rows[first]] += gather @ values


def _padding_index(padding_idx: int | None, num_embeddings: int) -> int | None:
    if padding_idx is None:
        return None
    if isinstance(padding_idx, bool) or not isinstance(padding_idx, (int, numpy.integer)) \
            or not -num_embeddings <= padding_idx < num_embeddings:
        raise ValueError(f"Embedding padding_idx must be an integer in [{-num_embeddings}, {num_embeddings}) "
                         f"for num_embeddings={num_embeddings}, got {padding_idx!r}")
    return int(padding_idx) % num_embeddings
