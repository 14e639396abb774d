"""gpt: GPT-2 as a flat Sequential (embedding, transformer blocks, final norm, tied head), and sampling from it."""
from __future__ import annotations

import math

import numpy

from mpiprop.network.backend import Array, get_array_module, to_numpy
from mpiprop.network.checks import positive_int
from mpiprop.network.layers import init
from mpiprop.network.layers.activations import GELU
from mpiprop.network.layers.attention import CausalSelfAttention
from mpiprop.network.layers.dropout import Dropout
from mpiprop.network.layers.layernorm import LayerNorm
from mpiprop.network.layers.linear import Linear
from mpiprop.network.layers.residual import Residual
from mpiprop.network.layers.sequential import Sequential
from mpiprop.network.layers.tied_head import TiedLinear
from mpiprop.network.layers.token_position_embedding import TokenPositionEmbedding

INIT_STD = 0.02


def gpt(vocab_size: int, context_length: int, num_layers: int, num_heads: int, embed_dim: int,
        dropout: float = 0.0, bias: bool = True, *, dtype=numpy.float32, device: str = "cpu",
        generator=None) -> Sequential:
    """A GPT-2 style language model: ids (B, T) to logits (B, T, vocab_size).

    The Sequential is flat, so a pipeline can cut it between any two elements:

        0                       TokenPositionEmbedding (wte, wpe, dropout)
        1, 3, ..., 2L-1         Residual(LayerNorm, CausalSelfAttention)           (attention half of block i)
        2, 4, ..., 2L           Residual(LayerNorm, Linear(C, 4C), GELU(tanh), Linear(4C, C), Dropout)
        2L+1                    LayerNorm
        2L+2                    TiedLinear sharing the embedding's wte weight (no bias)

    Initialised as GPT-2: every Linear and Embedding weight N(0, 0.02²), biases zero, LayerNorms
    one and zero, and the projections back into the residual stream (attention `proj`, the MLP's
    second Linear) N(0, (0.02 / sqrt(2 num_layers))²).

    Args:
        vocab_size: V, the number of token ids.
        context_length: the longest sequence the model reads.
        num_layers: L, the number of transformer blocks.
        num_heads: attention heads per block; must divide embed_dim.
        embed_dim: C, the width of the residual stream.
        dropout: dropout probability after the embedding, on attention weights and on each residual branch.
        bias: whether Linear layers and LayerNorms have biases.
        dtype: parameter dtype (float32 by default).
        device: "cpu" (numpy) or "cuda" (cupy).
        generator: numpy Generator for the initial values; defaults to the seeded shared one.

    Returns:
        The model, a Sequential of 2 * num_layers + 3 layers.

    Raises:
        ValueError: for sizes that are not positive, or num_heads that does not divide embed_dim.
    """
    for value, name in ((vocab_size, "vocab_size"), (context_length, "context_length"), (num_layers, "num_layers"),
                        (num_heads, "num_heads"), (embed_dim, "embed_dim")):
        positive_int(value, f"gpt {name}")
    if embed_dim % num_heads:
        raise ValueError(f"gpt embed_dim {embed_dim} is not divisible by num_heads {num_heads}; each head gets "
                         f"embed_dim / num_heads channels, so choose num_heads among the divisors of {embed_dim}")
    made = {"dtype": dtype, "device": device}
    embedding = TokenPositionEmbedding(vocab_size, context_length, embed_dim, dropout, generator=generator, **made)
    layers = [embedding]
    for _ in range(num_layers):
        layers.append(Residual(LayerNorm(embed_dim, bias=bias, **made),
                               CausalSelfAttention(embed_dim, num_heads, dropout, bias, generator=generator, **made)))
        layers.append(Residual(LayerNorm(embed_dim, bias=bias, **made),
                               Linear(embed_dim, 4 * embed_dim, bias, generator=generator, **made),
                               GELU(approximate="tanh"),
                               Linear(4 * embed_dim, embed_dim, bias, generator=generator, **made),
                               Dropout(dropout)))
    layers += [LayerNorm(embed_dim, bias=bias, **made), TiedLinear(embedding.wte)]
    model = Sequential(*layers)
    _initialise_as_gpt2(model, num_layers, generator)
    return model


def _initialise_as_gpt2(model: Sequential, num_layers: int, generator) -> None:
    residual_std = INIT_STD / math.sqrt(2 * num_layers)
    embedding = model[0]
    for table in (embedding.wte, embedding.wpe):
        init.normal_(table.weight, 0.0, INIT_STD, generator)
    for half in model.layers[1:-2]:
        linears = [layer for layer in half.descendants() if isinstance(layer, Linear)]
        for linear in linears:
            init.normal_(linear.weight, 0.0, residual_std if linear is linears[-1] else INIT_STD, generator)
            if linear.bias is not None:
                init.zeros_(linear.bias)


def generate(model: Sequential, ids: Array, max_new_tokens: int, *, context_length: int,
             temperature: float = 1.0, top_k: int | None = None, generator=None) -> numpy.ndarray:
    """Sample `max_new_tokens` ids after `ids` (B, T), one at a time, each from the softmax of the last logits.

    The model runs in eval mode (no dropout) on the last `context_length` ids at each step and
    is left in eval mode.

    Args:
        model: a language model, ids (B, T) to logits (B, T, V).
        ids: the prompt, integers of shape (B, T), T >= 1.
        max_new_tokens: how many ids to add.
        context_length: the longest sequence the model reads.
        temperature: divides the logits (lower: more likely ids).
        top_k: sample only among the k most likely ids; None for all.
        generator: numpy Generator for the draws; defaults to a fresh unseeded one.

    Returns:
        The prompt followed by the new ids, a numpy array of shape (B, T + max_new_tokens).

    Raises:
        ValueError: for a temperature that is not positive or an empty prompt.
    """
    if not temperature > 0:
        raise ValueError(f"generate temperature must be > 0, got {temperature}")
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"generate needs a prompt of shape (batch, time) with at least one id, got {tuple(ids.shape)}")
    generator = generator if generator is not None else numpy.random.default_rng()
    model.eval()
    xp = get_array_module(ids)
    for _ in range(max_new_tokens):
        logits, _ = model.forward(ids[:, -context_length:])
        last = to_numpy(logits[:, -1, :]).astype(numpy.float64) / temperature
        if top_k is not None and top_k < last.shape[-1]:
            kth = numpy.sort(last, axis=-1)[:, -top_k][:, None]
            last = numpy.where(last < kth, -numpy.inf, last)
        probabilities = numpy.exp(last - last.max(axis=-1, keepdims=True))
        probabilities /= probabilities.sum(axis=-1, keepdims=True)
        chosen = [generator.choice(len(row), p=row) for row in probabilities]
        ids = xp.concatenate([ids, xp.asarray(numpy.array(chosen, dtype=ids.dtype)[:, None])], axis=1)
    return to_numpy(ids)
