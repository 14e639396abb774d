"""Transformer building blocks (Linear on (..., in), GELU, Embedding, LayerNorm, Residual, TiedLinear) against PyTorch."""
from __future__ import annotations

import numpy
import pytest
import torch

import mpiprop.network as nn
from mpiprop.network.backend import get_array_module, to_numpy

TOLERANCE_FLOAT64 = 1e-10


def rng(seed=0):
    return numpy.random.default_rng(seed)


def as_torch(array, grad=False):
    tensor = torch.tensor(to_numpy(array))
    return tensor.requires_grad_(True) if grad else tensor


def run_ours(layer, x, dy):
    layer.zero_grad()
    y, cache = layer.forward(x)
    dx = layer.backward(dy, cache)
    return y, dx, {name: p.grad.copy() for name, p in layer.named_parameters()}


def run_torch(module, x, dy, parameter_names):
    """Output, input gradient and {our name: torch gradient}, for `parameter_names` mapping our names to torch's."""
    x_t = as_torch(x, grad=x.dtype.kind == "f")
    dy = to_numpy(dy)
    y_t = module(x_t)
    y_t.backward(as_torch(dy))
    grads = dict(module.named_parameters())
    return (y_t.detach().numpy(), None if x_t.grad is None else x_t.grad.numpy(),
            {ours: _torch_grad(grads, theirs) for ours, theirs in parameter_names.items()})


def _torch_grad(grads, name):
    """The gradient of torch parameter `name`; "name.T" for its transpose (our Linear weight is (in, out))."""
    if name.endswith(".T"):
        return grads[name[:-2]].grad.numpy().T
    return grads[name].grad.numpy()


def assert_matches(ours, reference, float32_reference=None, what=""):
    """float64: within 1e-10; float32: within a few times PyTorch's own float32 rounding error."""
    ours, reference = to_numpy(ours), numpy.asarray(reference, dtype=numpy.float64)
    error = float(numpy.abs(ours.astype(numpy.float64) - reference).max(initial=0.0))
    if ours.dtype == numpy.float64:
        assert error <= TOLERANCE_FLOAT64 * max(1.0, float(numpy.abs(reference).max(initial=0.0))), (what, error)
        return
    torch_error = float(numpy.abs(numpy.asarray(float32_reference, numpy.float64) - reference).max(initial=0.0))
    floor = float(numpy.finfo(numpy.float32).eps) * max(1.0, float(numpy.abs(reference).max(initial=0.0)))
    assert error <= 4 * max(torch_error, floor), (what, error, torch_error)


def compare_with_torch(ours_layer, make_torch, x, names, dtype):
    """Run our layer and the torch module (in float64 and, for float32, in float32) on x; compare all.

    `names` maps our parameter names to torch's ("weight.T" for a transposed weight)."""
    ours_y, _ = ours_layer.forward(x)
    dy = rng(99).standard_normal(ours_y.shape).astype(dtype)
    y, dx, grads = run_ours(ours_layer, x, get_array_module(x).asarray(dy))
    x64 = x.astype(numpy.float64) if x.dtype.kind == "f" else x
    reference = run_torch(make_torch(torch.float64), x64, dy.astype(numpy.float64), names)
    float32 = run_torch(make_torch(torch.float32), x, dy, names) if dtype == numpy.float32 else (None, None, {})
    assert y.dtype == dtype and y.shape == reference[0].shape
    assert_matches(y, reference[0], float32[0], "output")
    if reference[1] is not None:
        assert dx.dtype == dtype and dx.shape == x.shape
        assert_matches(dx, reference[1], float32[1], "input gradient")
    for name in names:
        assert_matches(grads[name], reference[2][name], float32[2].get(name), name)


def float_input(xp, shape, dtype, seed=1):
    return xp.asarray(rng(seed).standard_normal(shape).astype(dtype))


DTYPES = [numpy.float64, numpy.float32]


# --- Linear on (..., in) --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 5), (2, 3, 5), (2, 1, 3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_on_leading_dimensions_matches_torch(xp, device, dtype, shape, bias):
    ours = nn.Linear(5, 3, bias, dtype=dtype, device=device, generator=rng(2))

    def make(torch_dtype):
        module = torch.nn.Linear(5, 3, bias=bias, dtype=torch_dtype)
        with torch.no_grad():
            module.weight.copy_(torch.tensor(to_numpy(ours.weight.data).T))
            if bias:
                module.bias.copy_(torch.tensor(to_numpy(ours.bias.data)))
        return module

    names = {"weight": "weight.T", **({"bias": "bias"} if bias else {})}
    compare_with_torch(ours, make, float_input(xp, shape, dtype), names, dtype)


def test_linear_weight_gradient_on_three_dimensions_is_transposed_for_torch(xp, device):
    """Guards the name mapping above: our weight gradient is torch's transposed."""
    ours = nn.Linear(5, 3, dtype=numpy.float64, device=device)
    x = float_input(xp, (2, 3, 5), numpy.float64)
    _, _, grads = run_ours(ours, x, xp.ones((2, 3, 3)))
    numpy.testing.assert_allclose(to_numpy(grads["weight"]), to_numpy(x).reshape(-1, 5).sum(0)[:, None].repeat(3, 1))


def test_linear_gradcheck_on_three_dimensions(xp, device):
    nn.gradcheck(nn.Linear(4, 3, device=device), float_input(xp, (2, 3, 4), numpy.float64))


def test_linear_rejects_wrong_output_gradient_naming_shapes():
    layer = nn.Linear(4, 3)
    _, cache = layer.forward(numpy.zeros((2, 5, 4), numpy.float32))
    with pytest.raises(ValueError, match=r"output gradient of shape \(2, 3\) but its output has shape \(2, 5, 3\)"):
        layer.backward(numpy.zeros((2, 3), numpy.float32), cache)


# --- GELU -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.usefixtures("cpu_loops")
def test_gelu_matches_torch(xp, dtype, approximate):
    x = float_input(xp, (3, 4, 5), dtype) * 3
    compare_with_torch(nn.GELU(approximate), lambda _: torch.nn.GELU(approximate), x, {}, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("cpu_loops")
def test_tanh_gelu_over_several_cache_blocks_matches_torch(xp, dtype):
    from mpiprop.network.compute.blocks import BLOCK_BYTES

    width = 700
    rows = 3 * BLOCK_BYTES // (numpy.dtype(dtype).itemsize * width) + 5  # three blocks and a short one
    x = float_input(xp, (rows, 1, width), dtype) * 3
    compare_with_torch(nn.GELU("tanh"), lambda _: torch.nn.GELU("tanh"), x, {}, dtype)


@pytest.mark.usefixtures("cpu_loops")
def test_gelu_tanh_gradcheck(xp):
    nn.gradcheck(nn.GELU(approximate="tanh"), float_input(xp, (4, 6), numpy.float64) * 3)


def test_gelu_rejects_unknown_approximation():
    with pytest.raises(ValueError, match=r"GELU approximate must be one of \('none', 'tanh'\), got 'erf'"):
        nn.GELU(approximate="erf")


# --- Embedding --------------------------------------------------------------------------------------------


def torch_embedding(ours, padding_idx=None):
    def make(torch_dtype):
        module = torch.nn.Embedding(ours.num_embeddings, ours.embedding_dim, padding_idx=padding_idx, dtype=torch_dtype)
        with torch.no_grad():
            module.weight.copy_(torch.tensor(to_numpy(ours.weight.data)))
        return module
    return make


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4)])
@pytest.mark.parametrize("padding_idx", [None, 2, -1])
def test_embedding_matches_torch(xp, device, dtype, shape, padding_idx):
    ours = nn.Embedding(6, 4, padding_idx, dtype=dtype, device=device, generator=rng(3))
    ids = xp.asarray(rng(4).integers(0, 6, shape))
    compare_with_torch(ours, torch_embedding(ours, padding_idx), ids, {"weight": "weight"}, dtype)


def test_embedding_repeated_ids_accumulate(xp, device):
    layer = nn.Embedding(5, 3, dtype=numpy.float64, device=device)
    ids = xp.asarray([[1, 3, 1], [1, 0, 3]])
    dy = xp.asarray(rng(5).standard_normal((2, 3, 3)))
    layer.backward(dy, layer.forward(ids)[1])
    grad, dy = to_numpy(layer.weight.grad), to_numpy(dy)
    numpy.testing.assert_allclose(grad[1], dy[0, 0] + dy[0, 2] + dy[1, 0], rtol=0, atol=1e-15)
    numpy.testing.assert_allclose(grad[3], dy[0, 1] + dy[1, 2], rtol=0, atol=1e-15)
    numpy.testing.assert_array_equal(grad[[2, 4]], 0)


def test_embedding_padding_row_starts_at_zero_and_never_gets_a_gradient(xp, device):
    layer = nn.Embedding(5, 3, padding_idx=4, device=device)
    assert not to_numpy(layer.weight.data[4]).any() and to_numpy(layer.weight.data[:4]).all()
    ids = xp.asarray([4, 4, 1])
    layer.backward(xp.ones((3, 3), dtype=numpy.float32), layer.forward(ids)[1])
    numpy.testing.assert_array_equal(to_numpy(layer.weight.grad)[4], 0)
    numpy.testing.assert_array_equal(to_numpy(layer.weight.grad)[1], 1)


def test_embedding_initialisation_is_standard_normal():
    weight = nn.Embedding(2000, 50, generator=rng(6)).weight.data
    assert weight.shape == (2000, 50) and weight.dtype == numpy.float32
    assert abs(float(weight.mean())) < 0.01 and abs(float(weight.std()) - 1.0) < 0.01


def test_embedding_gradcheck(xp, device):
    """Without padding_idx: the padding row is used by forward but, by design, gets no gradient."""
    nn.gradcheck(nn.Embedding(6, 3, device=device), xp.asarray(rng(7).integers(0, 6, (3, 4))))


def test_embedding_first_in_a_sequential_returns_no_input_gradient(xp, device):
    model = nn.Sequential(nn.Embedding(6, 4, device=device), nn.Linear(4, 2, device=device))
    y = model(xp.asarray([[0, 5], [3, 3]]))
    assert model.backward(xp.ones_like(y)) is None
    assert to_numpy(model[0].weight.grad).any()


def test_embedding_rejects_float_ids_and_ids_out_of_range():
    layer = nn.Embedding(10, 4)
    with pytest.raises(TypeError, match=r"expects integer ids but got dtype float32 of shape \(2, 3\).*astype"):
        layer.forward(numpy.zeros((2, 3), numpy.float32))
    with pytest.raises(ValueError, match=r"got ids from 0 to 12 but has num_embeddings=10.*\[0, 9\]"):
        layer.forward(numpy.array([[0, 12]]))
    with pytest.raises(ValueError, match=r"got ids from -1 to 3"):
        layer.forward(numpy.array([-1, 3]))
    with pytest.raises(ValueError, match=r"padding_idx must be an integer in \[-10, 10\).*got 10"):
        nn.Embedding(10, 4, padding_idx=10)


# --- LayerNorm --------------------------------------------------------------------------------------------


def torch_layer_norm(ours, normalized_shape, affine, bias):
    def make(torch_dtype):
        module = torch.nn.LayerNorm(normalized_shape, eps=ours.eps, elementwise_affine=affine, bias=bias,
                                    dtype=torch_dtype)
        if affine:
            with torch.no_grad():
                module.weight.copy_(torch.tensor(to_numpy(ours.weight.data)))
                if bias:
                    module.bias.copy_(torch.tensor(to_numpy(ours.bias.data)))
        return module
    return make


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, normalized_shape", [((4, 6), 6), ((2, 3, 6), (6,)), ((2, 3, 4, 5), (4, 5))])
@pytest.mark.parametrize("affine, bias", [(True, True), (True, False), (False, True)])
@pytest.mark.usefixtures("cpu_loops")
def test_layer_norm_matches_torch(xp, device, dtype, shape, normalized_shape, affine, bias):
    ours = nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=affine, bias=bias, dtype=dtype, device=device)
    for p in ours.parameters():  # away from the ones/zeros start, so a swapped weight and bias would show
        p.data[...] = xp.asarray(rng(8).standard_normal(p.shape).astype(dtype))
    names = {name: name for name, _ in ours.named_parameters()}
    x = float_input(xp, shape, dtype) * 2 + 0.5
    compare_with_torch(ours, torch_layer_norm(ours, normalized_shape, affine, bias), x, names, dtype)


def test_layer_norm_defaults_follow_torch():
    layer = nn.LayerNorm(4)
    assert layer.normalized_shape == (4,) and layer.eps == 1e-5
    numpy.testing.assert_array_equal(layer.weight.data, numpy.ones(4, numpy.float32))
    numpy.testing.assert_array_equal(layer.bias.data, numpy.zeros(4, numpy.float32))


@pytest.mark.usefixtures("cpu_loops")
def test_layer_norm_gradcheck(xp, device):
    layer = nn.LayerNorm((3, 4), device=device)
    for p in layer.parameters():
        p.data[...] = xp.asarray(rng(9).standard_normal(p.shape).astype(numpy.float32))
    nn.gradcheck(layer, float_input(xp, (2, 3, 4), numpy.float64))


@pytest.mark.usefixtures("cpu_loops")
def test_layer_norm_of_no_rows_is_empty_and_adds_no_gradient():
    layer = nn.LayerNorm((3, 4))
    y, cache = layer.forward(numpy.zeros((0, 2, 3, 4), numpy.float32))
    dx = layer.backward(numpy.zeros((0, 2, 3, 4), numpy.float32), cache)
    assert y.shape == dx.shape == (0, 2, 3, 4)
    assert not layer.weight.grad.any() and not layer.bias.grad.any()


def test_layer_norm_rejects_a_trailing_shape_that_differs():
    with pytest.raises(ValueError, match=r"last dimensions of shape \(8,\) but got input of shape \(2, 3, 6\).*here \(6,\)"):
        nn.LayerNorm(8).forward(numpy.zeros((2, 3, 6), numpy.float32))


# --- Residual ---------------------------------------------------------------------------------------------


def feed_forward(width, device="cpu", dtype=numpy.float32, seed=10):
    generator = rng(seed)
    return [nn.LayerNorm(width, dtype=dtype, device=device), nn.Linear(width, 2 * width, dtype=dtype, device=device,
            generator=generator), nn.GELU(), nn.Linear(2 * width, width, dtype=dtype, device=device, generator=generator)]


class TorchResidual(torch.nn.Module):
    def __init__(self, *layers):
        super().__init__()
        self.body = torch.nn.Sequential(*layers)

    def forward(self, x):
        return x + self.body(x)


def torch_feed_forward(ours_layers, torch_dtype):
    norm, first, _, second = ours_layers
    layers = [torch.nn.LayerNorm(norm.normalized_shape, dtype=torch_dtype), torch.nn.Linear(1, 1, dtype=torch_dtype),
              torch.nn.GELU(), torch.nn.Linear(1, 1, dtype=torch_dtype)]
    with torch.no_grad():
        for linear, ours in ((layers[1], first), (layers[3], second)):
            linear.weight = torch.nn.Parameter(torch.tensor(to_numpy(ours.weight.data).T.copy()).to(torch_dtype))
            linear.bias = torch.nn.Parameter(torch.tensor(to_numpy(ours.bias.data)).to(torch_dtype))
    return layers


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_matches_torch(xp, device, dtype):
    ours = nn.Residual(*feed_forward(6, device, dtype))
    assert [name for name, _ in ours.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias",
                                                              "3.weight", "3.bias"]
    names = {"0.weight": "body.0.weight", "0.bias": "body.0.bias", "1.weight": "body.1.weight.T",
             "1.bias": "body.1.bias", "3.weight": "body.3.weight.T", "3.bias": "body.3.bias"}
    ours.body.layers[0].weight.data[...] = xp.asarray(rng(16).standard_normal(6).astype(dtype))

    def make(torch_dtype):
        module = TorchResidual(*torch_feed_forward(ours.body.layers, torch_dtype))
        with torch.no_grad():
            module.body[0].weight.copy_(torch.tensor(to_numpy(ours.body.layers[0].weight.data)))
        return module

    compare_with_torch(ours, make, float_input(xp, (2, 3, 6), dtype), names, dtype)


def test_residual_gradcheck(xp, device):
    nn.gradcheck(nn.Residual(*feed_forward(4, device)), float_input(xp, (2, 3, 4), numpy.float64))


def test_residual_in_a_sequential_names_slices_and_indexes_its_layers():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU(), nn.Residual(*feed_forward(4)), nn.Linear(4, 2))
    names = [name for name, _ in model.named_parameters()]
    assert names[4:8] == ["3.0.weight", "3.0.bias", "3.1.weight", "3.1.bias"] and names[-2:] == ["4.weight", "4.bias"]
    assert model[3][1] is model.layers[3].body.layers[1] and len(model[3]) == 4
    assert [name for name, _ in model[3:].named_parameters()][0] == "0.0.weight"
    state = model.state_dict()
    assert "3.3.weight" in state
    model.load_state_dict(state)


def test_residual_split_backward_equals_backward(xp, device):
    """backward_input then backward_weight (a zero-bubble schedule's split) gives what backward gives."""
    block = nn.Residual(*feed_forward(4, device, numpy.float64))
    x = float_input(xp, (3, 4), numpy.float64)
    dy = float_input(xp, (3, 4), numpy.float64, seed=12)
    _, dx, grads = run_ours(block, x, dy)
    block.zero_grad()
    _, cache = block.forward(x)
    split_dx = block.backward_input(dy, cache)
    block.backward_weight(dy, cache)
    numpy.testing.assert_allclose(to_numpy(split_dx), to_numpy(dx), rtol=0, atol=1e-14)
    for name, p in block.named_parameters():
        numpy.testing.assert_allclose(to_numpy(p.grad), to_numpy(grads[name]), rtol=0, atol=1e-14)
    block.zero_grad()
    _, cache = block.forward(x)
    block.backward_weight(dy, cache)  # alone, as Sequential.backward(input_grad=False) calls it
    for name, p in block.named_parameters():
        numpy.testing.assert_allclose(to_numpy(p.grad), to_numpy(grads[name]), rtol=0, atol=1e-14)


def test_residual_parameters_are_reported_final_by_the_sequential_hook():
    block = nn.Residual(*feed_forward(4))
    model = nn.Sequential(nn.Linear(4, 4), block, nn.Linear(4, 2))
    reported = []
    y = model(numpy.ones((2, 4), numpy.float32))
    model.backward(numpy.ones_like(y), on_parameters_final=lambda ps: reported.append([id(p) for p in ps]))
    assert sorted(id(p) for p in block.parameters()) == sorted(reported[1])
    assert sorted(sum(reported, [])) == sorted(id(p) for p in model.parameters())


def test_recompute_of_a_residual_gives_the_plain_gradients():
    plain = nn.Sequential(nn.Linear(4, 4, dtype=numpy.float64), nn.Residual(*feed_forward(4, dtype=numpy.float64)))
    wrapped = nn.Sequential(plain[0], nn.Recompute(plain[1]))
    assert [n for n, _ in wrapped.named_parameters()] == [n for n, _ in plain.named_parameters()]
    x = rng(13).standard_normal((3, 4))
    expected = run_ours(plain, x, numpy.ones((3, 4)))
    got = run_ours(wrapped, x, numpy.ones((3, 4)))
    numpy.testing.assert_array_equal(got[0], expected[0])
    numpy.testing.assert_array_equal(got[1], expected[1])
    for name in expected[2]:
        numpy.testing.assert_array_equal(got[2][name], expected[2][name])


def test_residual_rejects_a_body_that_changes_the_width():
    with pytest.raises(ValueError, match=r"f maps shape \(2, 4\) to \(2, 3\); the last layer of f"):
        nn.Residual(nn.Linear(4, 3)).forward(numpy.zeros((2, 4), numpy.float32))


# --- TiedLinear -------------------------------------------------------------------------------------------


def test_tied_head_gradient_is_the_sum_of_both_uses(xp, device):
    embedding = nn.Embedding(7, 4, dtype=numpy.float64, device=device, generator=rng(14))
    head = nn.TiedLinear(embedding)
    assert head.weight is embedding.weight
    middle = nn.Linear(4, 4, dtype=numpy.float64, device=device, generator=rng(15))
    model = nn.Sequential(embedding, middle, head)
    ids = rng(16).integers(0, 7, (2, 3))
    dy = rng(17).standard_normal((2, 3, 7))
    y, _, grads = run_ours(model, xp.asarray(ids), xp.asarray(dy))

    as_embedding = as_torch(embedding.weight.data, grad=True)  # the two uses, untied
    as_head = as_torch(embedding.weight.data, grad=True)
    hidden = torch.nn.functional.linear(as_embedding[torch.tensor(ids)], as_torch(middle.weight.data).T,
                                        as_torch(middle.bias.data))
    logits = hidden @ as_head.T
    logits.backward(torch.tensor(dy))
    assert_matches(y, logits.detach().numpy())
    assert float(as_embedding.grad.abs().max()) > 0 and float(as_head.grad.abs().max()) > 0
    assert_matches(grads["0.weight"], (as_embedding.grad + as_head.grad).numpy(), what="tied weight")
    numpy.testing.assert_array_equal(to_numpy(grads["2.weight"]), to_numpy(grads["0.weight"]))


def test_tied_weight_is_listed_once_and_stepped_once():
    embedding = nn.Embedding(5, 3)
    model = nn.Sequential(embedding, nn.LayerNorm(3), nn.TiedLinear(embedding))
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "1.weight", "1.bias", "2.weight"]
    assert sum(p is embedding.weight for p in model.parameters()) == 1 and len(model.parameters()) == 3
    before = embedding.weight.data.copy()
    embedding.weight.grad[...] = 1.0
    nn.optim.SGD(model.parameters(), lr=0.5).step()
    numpy.testing.assert_allclose(embedding.weight.data, before - 0.5)


def test_tied_head_gradcheck(xp, device):
    embedding = nn.Embedding(5, 3, device=device)
    nn.gradcheck(nn.TiedLinear(embedding), float_input(xp, (2, 4, 3), numpy.float64))


def test_tied_head_rejects_a_width_other_than_the_embedding_dim():
    head = nn.TiedLinear(nn.Embedding(5, 3))
    with pytest.raises(ValueError, match=r"expects input of shape \(\.\.\., 3\).*got \(2, 4\)"):
        head.forward(numpy.zeros((2, 4), numpy.float32))
    with pytest.raises(TypeError, match=r"TiedLinear shares the weight of a network Embedding, got Linear"):
        nn.TiedLinear(nn.Linear(3, 5))


# --- CrossEntropyLoss on (N, C, d1, ...) ------------------------------------------------------------------


CROSS_ENTROPY_OPTIONS = [
    {}, {"ignore_index": 1}, {"weight": True}, {"label_smoothing": 0.2},
    {"weight": True, "ignore_index": 0, "label_smoothing": 0.1},
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 6), (2, 4, 3, 2)])
@pytest.mark.parametrize("options", CROSS_ENTROPY_OPTIONS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("probabilities", [False, True])
def test_cross_entropy_on_positions_matches_torch(xp, dtype, shape, options, reduction, probabilities):
    if probabilities and "ignore_index" in options:
        pytest.skip("ignore_index applies to class-index targets only")
    generator = rng(20)
    classes = shape[1]
    logits = generator.standard_normal(shape).astype(dtype) * 2
    positions = (shape[0],) + shape[2:]
    if probabilities:
        target = generator.dirichlet(numpy.ones(classes), positions).astype(dtype)
        target = numpy.moveaxis(target, -1, 1)
    else:
        target = generator.integers(0, classes, positions)
    weight = generator.uniform(0.5, 2.0, classes).astype(dtype) if options.get("weight") else None
    kwargs = {key: value for key, value in options.items() if key != "weight"}
    loss = nn.CrossEntropyLoss(weight=None if weight is None else xp.asarray(weight), reduction=reduction, **kwargs)
    grad_output = generator.standard_normal(positions).astype(dtype) if reduction == "none" else None
    value = loss(xp.asarray(logits), xp.asarray(target))
    grad = loss.backward(grad_output=None if grad_output is None else xp.asarray(grad_output))

    logits_t = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    target_t = torch.tensor(target, dtype=torch.float64) if probabilities else torch.tensor(target)
    expected = torch.nn.functional.cross_entropy(
        logits_t, target_t, weight=None if weight is None else torch.tensor(weight, dtype=torch.float64),
        reduction=reduction, **kwargs)
    expected.backward(torch.tensor(grad_output, dtype=torch.float64) if grad_output is not None else None)
    tolerance = TOLERANCE_FLOAT64 if dtype == numpy.float64 else 2e-5
    numpy.testing.assert_allclose(to_numpy(value) if reduction == "none" else value, expected.detach().numpy(),
                                  rtol=tolerance, atol=tolerance)
    assert grad.shape == logits.shape and grad.dtype == dtype
    numpy.testing.assert_allclose(to_numpy(grad), logits_t.grad.numpy(), rtol=tolerance, atol=tolerance)


def test_cross_entropy_names_the_label_shape_for_positions():
    with pytest.raises(TypeError, match=r"labels of shape \(2, 3\) \(the logits' shape without the class axis 1\), got "
                                        r"dtype int64 and shape \(2, 5\).*transpose\(0, 2, 1\)"):
        nn.CrossEntropyLoss()(numpy.zeros((2, 5, 3), numpy.float32), numpy.zeros((2, 5), numpy.int64))


# --- a tiny pre-norm transformer block ------------------------------------------------------------------------


class TorchTinyModel(torch.nn.Module):
    def __init__(self, ours):
        super().__init__()
        embedding, block, norm, _ = ours.layers
        self.embedding = torch.nn.Embedding(embedding.num_embeddings, embedding.embedding_dim, dtype=torch.float64)
        self.block = TorchResidual(*torch_feed_forward(block.body.layers, torch.float64))
        self.norm = torch.nn.LayerNorm(norm.normalized_shape, dtype=torch.float64)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.tensor(to_numpy(embedding.weight.data)))
            self.block.body[0].weight.copy_(torch.tensor(to_numpy(block.body.layers[0].weight.data)))
            self.norm.bias.copy_(torch.tensor(to_numpy(norm.bias.data)))

    def forward(self, ids):
        return self.norm(self.block(self.embedding(ids))) @ self.embedding.weight.T


def tiny_model(device="cpu"):
    embedding = nn.Embedding(11, 6, dtype=numpy.float64, device=device, generator=rng(21))
    model = nn.Sequential(embedding, nn.Residual(*feed_forward(6, device, numpy.float64)),
                          nn.LayerNorm(6, dtype=numpy.float64, device=device), nn.TiedLinear(embedding))
    model[1][0].weight.data[...] = model[1][0].weight.data + 0.5
    model[2].bias.data[...] = model[2].bias.data + 0.25
    return model


def test_tiny_pre_norm_model_matches_torch(xp, device):
    model = tiny_model(device)
    ids = rng(22).integers(0, 11, (3, 5))
    targets = rng(23).integers(0, 11, (3, 5))
    loss = nn.CrossEntropyLoss()
    logits = model(xp.asarray(ids))
    value = loss(xp.asarray(logits.transpose(0, 2, 1)), xp.asarray(targets))
    assert model.backward(loss.backward().transpose(0, 2, 1)) is None

    reference = TorchTinyModel(model)
    expected_logits = reference(torch.tensor(ids))
    expected = torch.nn.functional.cross_entropy(expected_logits.transpose(1, 2), torch.tensor(targets))
    expected.backward()
    assert abs(value - float(expected.detach())) <= TOLERANCE_FLOAT64
    assert_matches(logits, expected_logits.detach().numpy(), what="logits")
    torch_names = {"0.weight": "embedding.weight", "1.0.weight": "block.body.0.weight",
                   "1.0.bias": "block.body.0.bias", "1.1.weight": "block.body.1.weight.T",
                   "1.1.bias": "block.body.1.bias", "1.3.weight": "block.body.3.weight.T",
                   "1.3.bias": "block.body.3.bias", "2.weight": "norm.weight", "2.bias": "norm.bias",
                   "3.weight": "embedding.weight"}
    torch_parameters = dict(reference.named_parameters())
    for name, p in model.named_parameters():
        assert_matches(p.grad, _torch_grad(torch_parameters, torch_names[name]), what=name)


def test_tiny_pre_norm_model_gradcheck(xp, device):
    nn.gradcheck(tiny_model(device), xp.asarray(rng(24).integers(0, 11, (2, 4))))


def test_embedding_first_trains_without_an_input_gradient():
    """Sequential.backward(input_grad=False), as the training strategies call it, gives the full backward's gradients."""
    model = tiny_model()
    ids = rng(25).integers(0, 11, (2, 4))
    dy = rng(26).standard_normal((2, 4, 11))
    _, _, expected = run_ours(model, ids, dy)
    model.zero_grad()
    model.backward(dy, model.forward(ids)[1], input_grad=False)
    for name, p in model.named_parameters():
        numpy.testing.assert_array_equal(p.grad, expected[name])


def test_tied_model_checkpoint_round_trip_keeps_the_tie(tmp_path):
    model, copy = tiny_model(), tiny_model()
    for p in model.parameters():
        p.data += 1.0
    nn.save_checkpoint(tmp_path / "tied.npz", model)
    nn.load_checkpoint(tmp_path / "tied.npz", copy)
    assert copy[3].weight is copy[0].weight
    for mine, theirs in zip(model.parameters(), copy.parameters()):
        numpy.testing.assert_array_equal(mine.data, theirs.data)
