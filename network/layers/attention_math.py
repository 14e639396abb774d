"""Causal scaled dot-product attention over heads as a batch dimension: forward and backward as plain functions."""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple

import numpy

from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.compute import cpu_kernels
from mpiprop.network.compute.matmul import matmul
from mpiprop.network.compute.reductions import column_sums, row_dots


# Queries per block: half the queries, within these bounds. A block's scores stop at its last query's key, so the
# future of whole blocks is never computed: forward and backward run 1.1x as fast as in one block at 64 positions
# (two blocks of 32), 1.7x at 256 and 3.4x at 1024 (blocks of 64), on one thread (examples/benchmarks/
# bench_models.py --parts attention). Blocks of 16 rows lose to the calls they add; beyond 64 the saving shrinks.
QUERY_BLOCK_ROWS = (32, 64)


class AttentionCache(NamedTuple):
    """What `causal_attention_backward` needs: the inputs, the softmax weights, the dropout mask and the output.

    `weight_blocks` holds, per block of queries (`query_blocks`), the softmax weights of those
    queries over the keys up to their last one, keys by queries: (B, H, keys, queries), so that
    the softmax's reductions run across rows, where numpy is fastest. `weights` joins them into
    one (B, H, T, S) array, zero in the future.
    """

    q: Array
    k: Array
    v: Array
    weight_blocks: tuple[Array, ...]
    dropout_mask: Array | None
    output: Array

    @property
    def weights(self) -> Array:
        """The softmax weights as one (B, H, T, S) array, queries by keys (zero where a key lies in the future)."""
        batch, heads, queries, _ = self.q.shape
        whole = get_array_module(self.q).zeros((batch, heads, queries, self.k.shape[2]),
                                                dtype=statistics_dtype(self.q.dtype))
        for (rows, keys), block in zip(query_blocks(queries, self.k.shape[2]), self.weight_blocks):
            whole[:, :, rows, :keys] = block.swapaxes(-1, -2)
        return whole


def query_blocks(queries: int, keys: int) -> list[tuple[slice, int]]:
    """(the block's queries, how many keys they see) for each block of queries (QUERY_BLOCK_ROWS), the queries
    being the last `queries` of `keys` positions: a block sees the keys up to its last query's."""
    fewest, most = QUERY_BLOCK_ROWS
    rows = min(most, max(fewest, queries // 2))
    blocks = []
    for start in range(0, queries, rows):
        stop = min(start + rows, queries)
        blocks.append((slice(start, stop), keys - queries + stop))
    return blocks


def statistics_dtype(dtype: Any) -> numpy.dtype:
    """The dtype the scores and softmax are computed in: float32 at least (float64 stays float64)."""
    return numpy.promote_types(dtype, numpy.float32)


def causal_attention(q: Array, k: Array, v: Array, dropout_mask: Array | None = None, *,
                     into: Array | None = None) -> tuple[Array, AttentionCache]:
    """softmax(q kᵀ / sqrt(D) with the future masked out) v, for every batch row and head at once.

    Query i sees keys 0..i (with fewer queries than keys, the queries are the last ones). The
    queries go in blocks (`query_blocks`), each over the keys it can see only. The scores and the
    softmax are computed in float32 at least; the future inside a block gets -inf before the
    softmax, so its weights are exactly 0 in any precision.

    Args:
        q: queries (B, H, T, D).
        k, v: keys and values (B, H, S, D), S >= T.
        dropout_mask: None, or multipliers of the softmax weights (B, H, T, S): 0 where dropped,
            1/(1-p) where kept (see `draw_dropout_mask`).
        into: None, or a (B, T, H·D) array of v's dtype that receives the output with the heads side by
            side (`merge_heads`' layout, written by the products themselves: no copy).

    Returns:
        (output of shape (B, H, T, D) in v's dtype (a view of `into` when given), cache for
        `causal_attention_backward`, which holds views of the inputs and of the output).

    Raises:
        ValueError: for shapes that do not fit together.
    """
    _check_shapes(q, k, v, dropout_mask)
    xp = get_array_module(q)
    out = xp.empty(q.shape[:-1] + v.shape[-1:], dtype=v.dtype) if into is None else unmerge_heads(into, q.shape[1])
    blocks = []
    for rows, keys in query_blocks(q.shape[2], k.shape[2]):
        weights = _softmax_of_scores(q[:, :, rows], k[:, :, :keys])
        blocks.append(weights)
        used = weights if dropout_mask is None else weights * dropout_mask[:, :, rows, :keys].swapaxes(-1, -2)
        matmul(used.astype(v.dtype, copy=False).swapaxes(-1, -2), v[:, :, :keys], out=out[:, :, rows])
    return out, AttentionCache(q, k, v, tuple(blocks), dropout_mask, out)


def _softmax_of_scores(q: Array, k: Array) -> Array:
    """softmax over the keys of q kᵀ / sqrt(D) with the future masked out, keys by queries (B, H, S, T), in the
    statistics dtype; the queries are the last of the keys' positions."""
    xp = get_array_module(q)
    stats = statistics_dtype(q.dtype)
    scores = matmul(k, q.swapaxes(-1, -2)).astype(stats, copy=False)
    if cpu_kernels.causal_softmax_(scores, 1.0 / math.sqrt(q.shape[-1])):
        return scores
    scores *= stats.type(1.0 / math.sqrt(q.shape[-1]))
    scores += future_bias(q.shape[-2], k.shape[-2], stats, xp).T
    scores -= scores.max(axis=-2, keepdims=True)
    weights = xp.exp(scores, out=scores)
    weights /= column_sums(weights)
    return weights


def causal_attention_backward(dy: Array, cache: AttentionCache, *,
                              into: Array | None = None) -> tuple[Array, Array, Array]:
    """Gradients of the loss with respect to q, k and v, given its gradient `dy` with respect to the output.

    Args:
        dy: (B, H, T, D), the output's shape.
        cache: from `causal_attention`.
        into: None, or a (B, T, 3·H·D) array (q, k, v of one length and dtype) that receives the three
            gradients in `split_heads`' layout, the fused projection's gradient (`join_heads_grad`
            without its copy).

    Returns:
        (dq, dk, dv), each of its input's shape and dtype (views of `into` when given).

    Raises:
        ValueError: when dy does not have the output's shape.
    """
    q, k, v, weight_blocks, dropout_mask, output = cache
    if tuple(dy.shape) != tuple(output.shape):
        raise ValueError(f"attention output gradient has shape {tuple(dy.shape)} but the output has shape "
                         f"{tuple(output.shape)}")
    xp = get_array_module(dy)
    if into is None:
        dq, dk, dv = (xp.empty(x.shape, dtype=x.dtype) for x in (q, k, v))
    else:
        dq, dk, dv = split_heads(into, q.shape[1])
    blocks = list(zip(query_blocks(q.shape[2], k.shape[2]), weight_blocks))
    if not blocks:  # no queries: nothing reached the keys and values
        dk[...], dv[...] = 0, 0
    scale = 1.0 / math.sqrt(q.shape[-1])
    # the last block sees every key: it writes dk and dv whole, and the blocks before it add to their first keys
    for order, ((rows, keys), weights) in enumerate(reversed(blocks)):
        first = order == 0
        mask = None if dropout_mask is None else dropout_mask[:, :, rows, :keys].swapaxes(-1, -2)
        dscores = _block_backward(dy[:, :, rows], output[:, :, rows], weights, mask, v[:, :, :keys],
                                  dv[:, :, :keys], first, scale).astype(q.dtype, copy=False)
        matmul(dscores.swapaxes(-1, -2), k[:, :, :keys], out=dq[:, :, rows])
        _write_or_add(dk[:, :, :keys], dscores, q[:, :, rows], first)
    return dq, dk, dv


def _block_backward(dy: Array, output: Array, weights: Array, mask: Array | None, v: Array, dv: Array,
                    first: bool, scale: float) -> Array:
    """One block of queries: writes (`first`) or adds its share of dv, and returns the gradient of its scores
    (B, H, keys, queries) times `scale`, in the statistics dtype."""
    used = weights if mask is None else weights * mask
    _write_or_add(dv, used.astype(v.dtype, copy=False), dy, first)
    dweights = matmul(v, dy.swapaxes(-1, -2)).astype(weights.dtype, copy=False)
    if mask is not None:
        dweights *= mask
    # the softmax's backward subtracts, per query, the sum over keys of dweights * weights, which is dy · output
    query_sums = row_dots(dy.astype(weights.dtype, copy=False), output.astype(weights.dtype, copy=False))
    dscores = dweights
    dscores -= query_sums.swapaxes(-1, -2)
    dscores *= weights
    dscores *= weights.dtype.type(scale)
    return dscores


def _write_or_add(out: Array, a: Array, b: Array, write: bool) -> None:
    """out = a @ b when `write`, else out += a @ b (stacks of matrices)."""
    if write:
        matmul(a, b, out=out)
    else:
        out += matmul(a, b)


def future_mask(queries: int, keys: int, xp: Any = numpy) -> Array:
    """(queries, keys) booleans, True where a key lies in a query's future (the queries are the last `queries`)."""
    return xp.triu(xp.ones((queries, keys), dtype=bool), k=keys - queries + 1)


def future_bias(queries: int, keys: int, dtype: Any, xp: Any = numpy) -> Array:
    """(queries, keys) of `dtype`: -inf where a key lies in a query's future, 0 elsewhere (added to the scores).

    numpy's is made once per shape and dtype and shared, read-only.
    """
    if xp is numpy:
        return _shared_future_bias(queries, keys, numpy.dtype(dtype))
    return xp.where(future_mask(queries, keys, xp), numpy.dtype(dtype).type(-numpy.inf), numpy.dtype(dtype).type(0))


@functools.lru_cache(maxsize=64)
def _shared_future_bias(queries: int, keys: int, dtype: numpy.dtype) -> numpy.ndarray:
    bias = numpy.where(future_mask(queries, keys), dtype.type(-numpy.inf), dtype.type(0))
    bias.flags.writeable = False
    return bias


def draw_dropout_mask(shape: tuple[int, ...], p: float, generator: Any, dtype: Any) -> Array:
    """Inverted-dropout multipliers: 0 with probability p, else 1/(1-p), drawn from `generator` in `dtype`
    (float32 or float64), row by row, so a slice of the batch gets the rows of the whole batch's mask."""
    keep = generator.random(shape, dtype=dtype) >= p
    return keep * numpy.dtype(dtype).type(1.0 / (1.0 - p))


def split_heads(qkv: Array, num_heads: int) -> tuple[Array, Array, Array]:
    """(B, T, 3·H·D) fused projections, [q | k | v] each head after head, as q, k, v of shape (B, H, T, D)."""
    batch, time, width = qkv.shape
    fused = qkv.reshape(batch, time, 3, num_heads, width // (3 * num_heads)).transpose(2, 0, 3, 1, 4)
    return fused[0], fused[1], fused[2]


def join_heads_grad(dq: Array, dk: Array, dv: Array) -> Array:
    """The inverse of `split_heads` for gradients: (B, H, T, D) each into one (B, T, 3·H·D) array."""
    batch, heads, time, size = dq.shape
    joined = get_array_module(dq).empty((batch, time, 3, heads, size), dtype=dq.dtype)
    for index, part in enumerate((dq, dk, dv)):
        joined[:, :, index] = part.transpose(0, 2, 1, 3)
    return joined.reshape(batch, time, 3 * heads * size)


def merge_heads(y: Array) -> Array:
    """(B, H, T, D) into (B, T, H·D), heads side by side."""
    batch, heads, time, size = y.shape
    return y.transpose(0, 2, 1, 3).reshape(batch, time, heads * size)


def unmerge_heads(dy: Array, num_heads: int) -> Array:
    """The inverse of `merge_heads`: (B, T, H·D) into (B, H, T, D)."""
    batch, time, width = dy.shape
    return dy.reshape(batch, time, num_heads, width // num_heads).transpose(0, 2, 1, 3)


def _check_shapes(q: Array, k: Array, v: Array, mask: Array | None) -> None:
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"attention expects q, k, v of shape (batch, heads, time, head size), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape != v.shape[:-1] + (q.shape[-1],) or q.shape[:2] != k.shape[:2] or k.shape[2] < q.shape[2]:
        raise ValueError(f"attention q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit: q and k "
                         "need the same head size, all three the same batch and heads, k and v the same length, "
                         "at least the queries'")
    expected = q.shape[:-1] + (k.shape[2],)
    if mask is not None and tuple(mask.shape) != tuple(expected):
        raise ValueError(f"attention dropout mask has shape {tuple(mask.shape)} but the weights have shape {expected}")
