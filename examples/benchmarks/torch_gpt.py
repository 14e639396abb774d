"""The GPT of `mpiprop.network.gpt` written in PyTorch (nanoGPT's model), with the same nesting and so the same names.

`mirror(model)` builds it and loads our model's weights through `torch_state_dict`, so both start
from the same numbers; it needs torch, which mpiprop itself does not.
"""
from __future__ import annotations

from typing import Any

from mpiprop.network.training.torch_weights import torch_state_dict


def torch_gpt(vocab_size: int, context_length: int, num_layers: int, num_heads: int, embed_dim: int,
              bias: bool = True) -> Any:
    """nanoGPT's model (no dropout, tied head; biases in Linear and LayerNorm unless `bias` is False) as a torch
    `nn.Sequential` named like `nn.gpt`'s layers."""
    import torch
    tnn = torch.nn

    class Embedding(tnn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = tnn.Embedding(vocab_size, embed_dim), tnn.Embedding(context_length, embed_dim)

        def forward(self, ids):
            return self.wte(ids) + self.wpe(torch.arange(ids.shape[1], device=ids.device))

    class Attention(tnn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = tnn.Linear(embed_dim, 3 * embed_dim, bias=bias)
            self.proj = tnn.Linear(embed_dim, embed_dim, bias=bias)

        def forward(self, x):
            batch, time, width = x.shape
            q, k, v = (part.view(batch, time, num_heads, width // num_heads).transpose(1, 2)
                       for part in self.qkv(x).split(width, dim=2))
            y = tnn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.proj(y.transpose(1, 2).reshape(batch, time, width))

    class Residual(tnn.Sequential):
        def forward(self, x):
            return x + super().forward(x)

    embedding = Embedding()
    blocks = []
    for _ in range(num_layers):
        blocks.append(Residual(tnn.LayerNorm(embed_dim, bias=bias), Attention()))
        blocks.append(Residual(tnn.LayerNorm(embed_dim, bias=bias), tnn.Linear(embed_dim, 4 * embed_dim, bias=bias),
                               tnn.GELU(approximate="tanh"), tnn.Linear(4 * embed_dim, embed_dim, bias=bias),
                               tnn.Dropout(0.0)))
    head = tnn.Linear(embed_dim, vocab_size, bias=False)
    head.weight = embedding.wte.weight
    return tnn.Sequential(embedding, *blocks, tnn.LayerNorm(embed_dim, bias=bias), head)


def mirror(model: Any, vocab_size: int, context_length: int, num_layers: int, num_heads: int, embed_dim: int) -> Any:
    """A torch copy of our GPT `model` (built with these sizes), holding its weights in its dtype."""
    import torch

    state = torch_state_dict(model)
    reference = torch_gpt(vocab_size, context_length, num_layers, num_heads, embed_dim, bias="1.0.bias" in state)
    reference = reference.to(torch.from_numpy(next(iter(state.values()))).dtype)
    reference.load_state_dict({name: torch.from_numpy(value) for name, value in state.items()})
    return reference
