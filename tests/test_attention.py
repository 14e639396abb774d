"""CausalSelfAttention and its core against PyTorch in float64, finite differences, dropout streams and errors."""
from __future__ import annotations

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network.compute import reductions
from mpiprop.network.layers import attention_math
from mpiprop.network.layers.attention import CausalSelfAttention

torch = pytest.importorskip("torch")

B, T, C, H = 2, 5, 12, 3


def _layer(dropout=0.0, bias=True, seed=0) -> CausalSelfAttention:
    return CausalSelfAttention(C, H, dropout, bias, dtype=numpy.float64, generator=numpy.random.default_rng(seed))


def _torch_attention(layer: CausalSelfAttention, x: numpy.ndarray):
    """The same math in torch: fused projection, heads, torch's causal scaled dot-product attention, projection."""
    params = {name: torch.tensor(p.data.copy(), requires_grad=True) for name, p in layer.named_parameters()}
    tx = torch.tensor(x, requires_grad=True)
    batch, time, width = x.shape
    fused = tx @ params["qkv.weight"] + (params["qkv.bias"] if "qkv.bias" in params else 0)
    q, k, v = (part.reshape(batch, time, H, width // H).transpose(1, 2) for part in fused.split(width, dim=-1))
    heads = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    out = heads.transpose(1, 2).reshape(batch, time, width) @ params["proj.weight"]
    if "proj.bias" in params:
        out = out + params["proj.bias"]
    return out, tx, params


@pytest.mark.parametrize("query_block_rows", [None, 2], ids=["default blocks", "blocks of 2 queries"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.usefixtures("cpu_loops")
def test_forward_and_every_gradient_match_torch(monkeypatch, bias, query_block_rows):
    if query_block_rows is not None:
        monkeypatch.setattr(attention_math, "QUERY_BLOCK_ROWS", (query_block_rows, query_block_rows))
    layer = _layer(bias=bias)
    rng = numpy.random.default_rng(1)
    x, dy = rng.standard_normal((B, T, C)), rng.standard_normal((B, T, C))
    y, cache = layer.forward(x)
    layer.zero_grad()
    dx = layer.backward(dy, cache)
    ty, tx, params = _torch_attention(layer, x)
    ty.backward(torch.tensor(dy))
    numpy.testing.assert_allclose(y, ty.detach().numpy(), rtol=0, atol=1e-10)
    numpy.testing.assert_allclose(dx, tx.grad.numpy(), rtol=0, atol=1e-10)
    for name, p in layer.named_parameters():
        numpy.testing.assert_allclose(p.grad, params[name].grad.numpy(), rtol=0, atol=1e-10, err_msg=name)


def test_core_matches_torch_with_explicit_math_and_fewer_queries_than_keys():
    rng = numpy.random.default_rng(2)
    q, k, v = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 3, 6, 5)), rng.standard_normal((2, 3, 6, 5))
    dy = rng.standard_normal((2, 3, 4, 5))
    y, cache = attention_math.causal_attention(q, k, v)
    dq, dk, dv = attention_math.causal_attention_backward(dy, cache)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    scores = tq @ tk.transpose(-1, -2) / 5 ** 0.5
    future = torch.ones(4, 6, dtype=torch.bool).triu(6 - 4 + 1)
    ty = scores.masked_fill(future, float("-inf")).softmax(-1) @ tv
    ty.backward(torch.tensor(dy))
    for ours, theirs in ((y, ty), (dq, tq.grad), (dk, tk.grad), (dv, tv.grad)):
        numpy.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("block_rows", [1, 3, 32])
@pytest.mark.parametrize("queries, keys", [(7, 7), (5, 9), (40, 40), (33, 70)])
@pytest.mark.usefixtures("cpu_loops")
def test_core_in_query_blocks_matches_torch_with_dropout(monkeypatch, block_rows, queries, keys):
    """Blocks of queries that each stop at their last query's key, a short last block included, give torch's
    numbers; so do the joined weights, zero in the future."""
    monkeypatch.setattr(attention_math, "QUERY_BLOCK_ROWS", (block_rows, block_rows))
    rng = numpy.random.default_rng(queries * 100 + keys)
    q = rng.standard_normal((2, 3, queries, 4))
    k, v = rng.standard_normal((2, 3, keys, 4)), rng.standard_normal((2, 3, keys, 4))
    mask = attention_math.draw_dropout_mask((2, 3, queries, keys), 0.25, rng, numpy.float64)
    dy = rng.standard_normal((2, 3, queries, 4))
    y, cache = attention_math.causal_attention(q, k, v, mask)
    dq, dk, dv = attention_math.causal_attention_backward(dy, cache)
    tq, tk, tv = (torch.tensor(a, requires_grad=True) for a in (q, k, v))
    future = torch.ones(queries, keys, dtype=torch.bool).triu(keys - queries + 1)
    weights = (tq @ tk.transpose(-1, -2) / 2.0).masked_fill(future, float("-inf")).softmax(-1)
    ty = (weights * torch.tensor(mask)) @ tv
    ty.backward(torch.tensor(dy))
    for ours, theirs in ((y, ty), (dq, tq.grad), (dk, tk.grad), (dv, tv.grad), (cache.weights, weights)):
        numpy.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=0, atol=1e-10)
    expected_blocks = -(-queries // block_rows)
    assert len(cache.weight_blocks) == expected_blocks
    assert cache.weight_blocks[0].shape == (2, 3, keys - queries + min(block_rows, queries), min(block_rows, queries))


def test_query_blocks_are_half_the_queries_within_bounds_and_cover_them():
    fewest, most = attention_math.QUERY_BLOCK_ROWS
    for queries, keys in [(1, 1), (fewest, fewest), (2 * fewest, 2 * fewest), (4 * most + 5, 4 * most + 9)]:
        blocks = attention_math.query_blocks(queries, keys)
        rows = [block.stop - block.start for block, _ in blocks]
        assert rows[0] == min(most, max(fewest, queries // 2), queries) and sum(rows) == queries
        assert [block.start for block, _ in blocks] == [sum(rows[:i]) for i in range(len(rows))]
        assert [seen for _, seen in blocks] == [keys - queries + block.stop for block, _ in blocks]
    assert len(attention_math.query_blocks(64, 64)) == 2 and len(attention_math.query_blocks(1024, 1024)) == 1024 // most


def test_no_queries_give_empty_outputs_and_zero_key_and_value_gradients():
    k = numpy.ones((2, 3, 4, 5))
    y, cache = attention_math.causal_attention(numpy.ones((2, 3, 0, 5)), k, k)
    assert y.shape == (2, 3, 0, 5) and cache.weights.shape == (2, 3, 0, 4)
    dq, dk, dv = attention_math.causal_attention_backward(y, cache)
    assert dq.shape == (2, 3, 0, 5) and not dk.any() and not dv.any()


def test_split_backward_halves_give_the_same_gradients_as_backward():
    layer = _layer(dropout=0.3)
    x = numpy.random.default_rng(3).standard_normal((B, T, C))
    dy = numpy.random.default_rng(4).standard_normal((B, T, C))
    with nn.rng.seeded(5):
        _, cache = layer.forward(x)
    layer.zero_grad()
    dx = layer.backward(dy, cache)
    whole = {name: p.grad.copy() for name, p in layer.named_parameters()}
    with nn.rng.seeded(5):
        _, cache = layer.forward(x)
    layer.zero_grad()
    dx_split = layer.backward_input(dy, cache)
    layer.backward_weight(dy, cache)
    numpy.testing.assert_array_equal(dx, dx_split)
    for name, p in layer.named_parameters():
        numpy.testing.assert_array_equal(p.grad, whole[name])


@pytest.mark.parametrize("dropout", [0.0, 0.2])
@pytest.mark.usefixtures("cpu_loops")
def test_gradcheck(dropout):
    x = numpy.random.default_rng(6).standard_normal((2, 4, C))
    result = nn.gradcheck(_layer(dropout), x)
    assert result.worst < 1e-6


def test_dropout_in_training_is_reproducible_from_the_seed_and_off_in_eval():
    x = numpy.random.default_rng(7).standard_normal((B, T, C))

    def two_outputs(seed):
        nn.manual_seed(seed)
        layer = _layer(dropout=0.5)
        return layer.forward(x)[0], layer.forward(x)[0], layer

    first, second, layer = two_outputs(11)
    again, _, _ = two_outputs(11)
    other, _, _ = two_outputs(12)
    numpy.testing.assert_array_equal(first, again)
    assert not numpy.allclose(first, second)
    assert not numpy.allclose(first, other)
    layer.eval()
    plain = _layer(dropout=0.0)
    numpy.testing.assert_array_equal(layer.forward(x)[0], plain.forward(x)[0])


def test_dropout_drops_attention_weights_and_outputs_at_the_asked_rate():
    nn.manual_seed(0)
    layer = _layer(dropout=0.25)
    x = numpy.random.default_rng(8).standard_normal((8, 16, C))
    _, cache = layer.forward(x)
    causal = ~attention_math.future_mask(16, 16)
    weights_kept = (cache.attention.dropout_mask[..., causal] > 0).mean()
    outputs_kept = (cache.dropout > 0).mean()
    assert abs(weights_kept - 0.75) < 0.02 and abs(outputs_kept - 0.75) < 0.03


@pytest.mark.usefixtures("cpu_loops")
def test_float32_by_default_and_float16_softmax_statistics_in_float32():
    layer = CausalSelfAttention(C, H)
    assert layer.qkv.weight.dtype == numpy.float32
    x = numpy.random.default_rng(9).standard_normal((B, T, C)).astype(numpy.float32)
    assert layer.forward(x)[0].dtype == numpy.float32
    q = numpy.full((1, 1, 3, 4), 100.0, dtype=numpy.float16)
    y, cache = attention_math.causal_attention(q, q, q)
    assert cache.weights.dtype == numpy.float32 and y.dtype == numpy.float16
    assert numpy.isfinite(y).all()
    numpy.testing.assert_allclose(cache.weights[0, 0, -1], [1 / 3] * 3, rtol=1e-6)


def test_errors_name_the_values():
    with pytest.raises(ValueError, match="embed_dim 10 is not divisible by num_heads 3"):
        CausalSelfAttention(10, 3)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        CausalSelfAttention(12, 3, dropout=1.0)
    layer = CausalSelfAttention(12, 3)
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, time, 12\) but got \(2, 12\)"):
        layer.forward(numpy.zeros((2, 12), dtype=numpy.float32))
    with pytest.raises(ValueError, match=r"but got \(2, 5, 8\)"):
        layer.forward(numpy.zeros((2, 5, 8), dtype=numpy.float32))
    with pytest.raises(TypeError, match="floating dtype"):
        layer.forward(numpy.zeros((2, 5, 12), dtype=numpy.int64))


def test_parameter_names():
    names = [name for name, _ in _layer().named_parameters()]
    assert names == ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]


def test_a_batch_in_two_pieces_draws_the_rows_of_the_whole_batchs_masks():
    x = numpy.random.default_rng(10).standard_normal((4, T, C))
    nn.manual_seed(3)
    whole = _layer(dropout=0.3).forward(x)[0]
    nn.manual_seed(3)
    layer = _layer(dropout=0.3)
    pieces = numpy.concatenate([layer.forward(x[:1])[0], layer.forward(x[1:])[0]])
    numpy.testing.assert_allclose(pieces, whole, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("shape", [(2, 3, 5, 64), (2, 3, 4, 63), (7, 1), (3, 2), (4, 5)])
def test_row_and_column_sums_dots_and_means_match_numpy(dtype, shape):
    x = numpy.random.default_rng(1).standard_normal(shape).astype(dtype)
    tolerance = {"rtol": 1e-5 if dtype == numpy.float32 else 1e-12, "atol": 1e-5}
    for ours, axis in ((reductions.row_sums(x), -1), (reductions.column_sums(x), -2)):
        expected = x.astype(numpy.float64).sum(axis=axis, keepdims=True)
        assert ours.shape == expected.shape and ours.dtype == x.dtype
        numpy.testing.assert_allclose(ours, expected, **tolerance)
    numpy.testing.assert_allclose(reductions.row_means(x), x.astype(numpy.float64).mean(axis=-1, keepdims=True),
                                  **tolerance)
    y = numpy.random.default_rng(2).standard_normal(shape).astype(dtype)
    exact = x.astype(numpy.float64) * y
    for ours, expected in ((reductions.row_dots(x, y), exact.sum(axis=-1, keepdims=True)),
                           (reductions.column_dots(x, y), exact.reshape(-1, shape[-1]).sum(axis=0))):
        assert ours.shape == expected.shape and ours.dtype == x.dtype
        numpy.testing.assert_allclose(ours, expected, **tolerance)
