"""CausalSelfAttention: GPT's multi-head self-attention with a fused QKV projection and a causal mask."""
from __future__ import annotations

from typing import Any

import numpy

from mpiprop.network.backend import Array, get_array_module
from mpiprop.network.checks import float_array, positive_int
from mpiprop.network.compute import rng
from mpiprop.network.layers import attention_math as core
from mpiprop.network.layers.dropout import Dropout
from mpiprop.network.layers.layer import REMEMBERED, Layer
from mpiprop.network.layers.linear import Linear


class AttentionLayerCache:
    """The children's caches and the core's; `backward_input` keeps the two output gradients for `backward_weight`."""

    def __init__(self, shape: tuple[int, int, int], qkv: Any, attention: core.AttentionCache, proj: Any, dropout: Any):
        self.shape, self.qkv, self.attention, self.proj, self.dropout = shape, qkv, attention, proj, dropout
        self.output_grads: tuple[Array, Array] | None = None


class CausalSelfAttention(Layer):
    """Multi-head causal self-attention on (B, T, C) inputs, as in GPT-2 and nanoGPT.

    `qkv` (Linear(C, 3C)) projects each position to queries, keys and values, laid out
    [q | k | v], each split into `num_heads` heads of C / num_heads; every head attends to the
    positions up to its own (`attention_math.causal_attention`, heads as a batch dimension);
    the heads side by side go through `proj` (Linear(C, C)). In training, dropout drops softmax
    weights (from a random stream of this layer's own) and the projection's outputs (a `Dropout` child).

    Args:
        embed_dim: C, the width of the input and output.
        num_heads: H, which must divide C.
        dropout: probability of dropping an attention weight and an output element in training.
        bias: whether the two projections add a bias.
        dtype: parameter dtype (float32 by default).
        device: "cpu" (numpy) or "cuda" (cupy).
        generator: numpy Generator for the initial values; defaults to the seeded shared one.

    Raises:
        ValueError: when num_heads does not divide embed_dim, or dropout is not in [0, 1).
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True, *,
                 dtype=numpy.float32, device: str = "cpu", generator=None):
        super().__init__()
        self.embed_dim = positive_int(embed_dim, "CausalSelfAttention embed_dim")
        self.num_heads = positive_int(num_heads, "CausalSelfAttention num_heads")
        if embed_dim % num_heads:
            raise ValueError(f"CausalSelfAttention embed_dim {embed_dim} is not divisible by num_heads {num_heads}; "
                             f"choose num_heads among the divisors of {embed_dim}")
        if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"CausalSelfAttention dropout must be in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.qkv = Linear(embed_dim, 3 * embed_dim, bias, dtype=dtype, device=device, generator=generator)
        self.proj = Linear(embed_dim, embed_dim, bias, dtype=dtype, device=device, generator=generator)
        self.attention_stream = rng.new_stream()
        self.output_dropout = Dropout(dropout)

    def forward(self, x: Array) -> tuple[Array, AttentionLayerCache]:
        self._check_input(x)
        fused, qkv_cache = self.qkv.forward(x)
        q, k, v = core.split_heads(fused, self.num_heads)
        merged = get_array_module(x).empty(fused.shape[:-1] + (q.shape[1] * q.shape[3],), dtype=v.dtype)
        _, attention_cache = core.causal_attention(q, k, v, self._attention_dropout_mask(q.shape, q.dtype, x),
                                                   into=merged)
        y, proj_cache = self.proj.forward(merged)
        y, dropout_cache = self.output_dropout.forward(y)
        return y, AttentionLayerCache(x.shape, qkv_cache, attention_cache, proj_cache, dropout_cache)

    def backward(self, dy: Array, cache: AttentionLayerCache = REMEMBERED) -> Array:
        """Both halves of backward, running the attention core's backward once."""
        cache = self._cache_or_last(cache)
        dx = self.backward_input(dy, cache)
        self.backward_weight(dy, cache)
        return dx

    def backward_input(self, dy: Array, cache: AttentionLayerCache) -> Array:
        """Gradient with respect to the input; keeps the projections' output gradients for `backward_weight`."""
        cache.output_grads = self._output_grads(dy, cache)
        return self.qkv.backward_input(cache.output_grads[0], cache.qkv)

    def backward_weight(self, dy: Array, cache: AttentionLayerCache) -> None:
        """Accumulate both projections' parameter gradients (from the gradients `backward_input` kept, if it ran)."""
        dqkv, dproj = cache.output_grads if cache.output_grads is not None else self._output_grads(dy, cache)
        self.proj.backward_weight(dproj, cache.proj)
        self.qkv.backward_weight(dqkv, cache.qkv)
        cache.output_grads = None

    def _output_grads(self, dy: Array, cache: AttentionLayerCache) -> tuple[Array, Array]:
        """Gradients with respect to the outputs of `qkv` (B, T, 3C) and of `proj` (B, T, C)."""
        if tuple(dy.shape) != tuple(cache.shape):
            raise ValueError(f"{self!r} got an output gradient of shape {tuple(dy.shape)} but its output has shape "
                             f"{tuple(cache.shape)}; pass the gradient of the loss with respect to the output")
        dproj = self.output_dropout.backward_input(dy, cache.dropout)
        dheads = self.proj.backward_input(dproj, cache.proj)
        dqkv = get_array_module(dy).empty(dheads.shape[:-1] + (3 * dheads.shape[-1],), dtype=cache.attention.q.dtype)
        core.causal_attention_backward(core.unmerge_heads(dheads, self.num_heads), cache.attention, into=dqkv)
        return dqkv, dproj

    def _attention_dropout_mask(self, heads_shape: tuple[int, ...], dtype: Any, x: Array) -> Array | None:
        if not self.training or self.dropout == 0.0:
            return None
        batch, heads, time, _ = heads_shape
        generator = rng.stream_generator(self.attention_stream, get_array_module(x))
        return core.draw_dropout_mask((batch, heads, time, time), self.dropout, generator, core.statistics_dtype(dtype))

    def _check_input(self, x: Array) -> None:
        float_array(x, f"input of {self!r}")
        if x.ndim != 3 or x.shape[-1] != self.embed_dim:
            raise ValueError(f"{self!r} expects input of shape (batch, time, {self.embed_dim}) but got "
                             f"{tuple(x.shape)}; check the embedding width")

    def extra_repr(self) -> str:
        return (f"{self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
                f"bias={self.qkv.bias is not None}")
