"""Conv1d/2d, MaxPool, AvgPool, AdaptiveAvgPool and BatchNorm2d against torch, finite differences and their errors."""
import math

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network.backend import to_numpy
from packages import require

require("torch")
import torch  # noqa: E402

F = torch.nn.functional

# (layer class, batch, in, out, spatial, kernel, stride, padding, dilation, bias)
CONV_CASES = [
    (nn.Conv1d, 3, 2, 4, (11,), 3, 1, 0, 1, True),
    (nn.Conv1d, 2, 3, 5, (17,), 5, 2, 1, 1, True),
    (nn.Conv1d, 4, 1, 3, (20,), 4, 3, 2, 2, False),
    (nn.Conv1d, 2, 4, 2, (9,), 1, 1, 0, 1, True),
    (nn.Conv2d, 2, 3, 4, (7, 8), 3, 1, 1, 1, True),
    (nn.Conv2d, 3, 2, 3, (9, 6), (3, 2), (2, 1), (1, 0), (1, 2), True),
    (nn.Conv2d, 1, 1, 2, (10, 10), (2, 3), 3, (2, 1), (2, 1), False),
    (nn.Conv2d, 2, 5, 6, (5, 5), 5, 1, 2, 1, True),
]


def conv_case_id(case) -> str:
    cls, batch, cin, cout, spatial, k, s, p, d, bias = case
    return f"{cls.__name__}-x{spatial}-k{k}-s{s}-p{p}-d{d}-bias{bias}"


def make_conv(case, dtype):
    cls, batch, cin, cout, spatial, k, s, p, d, bias = case
    nn.manual_seed(CONV_CASES.index(case))
    layer = cls(cin, cout, k, stride=s, padding=p, dilation=d, bias=bias, dtype=dtype)
    x = numpy.random.default_rng(7).standard_normal((batch, cin) + spatial).astype(dtype)
    return layer, x


def torch_conv(layer, x, dy):
    """torch's output and gradients for `layer`'s weights (copied unchanged) on input x and output gradient dy."""
    function = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
    tx = torch.tensor(to_numpy(x), requires_grad=True)
    weight = torch.tensor(to_numpy(layer.weight.data), requires_grad=True)
    bias = None if layer.bias is None else torch.tensor(to_numpy(layer.bias.data), requires_grad=True)
    ty = function(tx, weight, bias, layer.stride, layer.padding, layer.dilation)
    ty.backward(torch.tensor(to_numpy(dy)))
    grads = {"input": tx.grad.numpy(), "weight": weight.grad.numpy()}
    if bias is not None:
        grads["bias"] = bias.grad.numpy()
    return ty.detach().numpy(), grads


def ours(layer, x, dy):
    y, cache = layer.forward(x)
    layer.zero_grad()
    dx = layer.backward(dy, cache)
    grads = {"input": to_numpy(dx), "weight": to_numpy(layer.weight.grad)}
    if layer.bias is not None:
        grads["bias"] = to_numpy(layer.bias.grad)
    return to_numpy(y), grads


@pytest.mark.parametrize("case", CONV_CASES, ids=conv_case_id)
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_conv_matches_torch(case, dtype, xp, device):
    layer, x = make_conv(case, dtype)
    y, _ = layer.forward(x)
    dy = numpy.random.default_rng(8).standard_normal(y.shape).astype(dtype)
    expected_y, expected = torch_conv(layer, x, dy)
    layer.to(device)
    got_y, got = ours(layer, xp.asarray(x), xp.asarray(dy))
    tolerance = dict(rtol=1e-10, atol=1e-10) if dtype == numpy.float64 else dict(rtol=2e-5, atol=2e-5)
    assert got_y.dtype == dtype and got_y.shape == expected_y.shape
    numpy.testing.assert_allclose(got_y, expected_y, **tolerance)
    for name, value in expected.items():
        assert got[name].dtype == dtype and got[name].shape == value.shape, name
        numpy.testing.assert_allclose(got[name], value, **tolerance, err_msg=name)


def random_conv_cases(count: int, seed: int) -> list:
    """`count` seeded random Conv1d/Conv2d settings whose output sizes are all at least 1."""
    rng, cases = numpy.random.default_rng(seed), []
    while len(cases) < count:
        cls = (nn.Conv1d, nn.Conv2d)[rng.integers(2)]
        dims = 1 if cls is nn.Conv1d else 2
        kernel, stride = tuple(rng.integers(1, 5, dims)), tuple(rng.integers(1, 4, dims))
        padding, dilation = tuple(rng.integers(0, 3, dims)), tuple(rng.integers(1, 3, dims))
        spatial = tuple(rng.integers(1, 14 if dims == 1 else 9, dims))
        if all(n + 2 * p - d * (k - 1) - 1 >= 0 for n, k, p, d in zip(spatial, kernel, padding, dilation)):
            cases.append((cls, int(rng.integers(1, 4)), int(rng.integers(1, 5)), int(rng.integers(1, 5)),
                          tuple(map(int, spatial)), tuple(map(int, kernel)), tuple(map(int, stride)),
                          tuple(map(int, padding)), tuple(map(int, dilation)), bool(rng.integers(2))))
    return cases


@pytest.mark.parametrize("case", random_conv_cases(24, seed=11), ids=conv_case_id)
def test_conv_matches_torch_on_random_settings(case):
    cls, batch, cin, cout, spatial, k, s, p, d, bias = case
    nn.manual_seed(0)
    layer = cls(cin, cout, k, stride=s, padding=p, dilation=d, bias=bias, dtype=numpy.float64)
    x = numpy.random.default_rng(1).standard_normal((batch, cin) + spatial)
    dy = numpy.random.default_rng(2).standard_normal(layer.forward(x)[0].shape)
    expected_y, expected = torch_conv(layer, x, dy)
    got_y, got = ours(layer, x, dy)
    numpy.testing.assert_allclose(got_y, expected_y, rtol=1e-10, atol=1e-10)
    for name, value in expected.items():
        numpy.testing.assert_allclose(got[name], value, rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("case", CONV_CASES[1::2], ids=conv_case_id)
def test_conv_gradcheck(case, xp, device):
    layer, x = make_conv(case, numpy.float64)
    nn.gradcheck(layer.to(device), xp.asarray(x))


def test_conv_split_backward_equals_backward_and_accumulates():
    layer, x = make_conv(CONV_CASES[5], numpy.float64)
    y, cache = layer.forward(x)
    dy = numpy.random.default_rng(3).standard_normal(y.shape)
    layer.zero_grad()
    dx = layer.backward(dy, cache)
    whole = [p.grad.copy() for p in layer.parameters()]
    layer.zero_grad()
    layer.backward_weight(dy, cache)
    numpy.testing.assert_array_equal(layer.backward_input(dy, cache), dx)
    layer.backward_weight(dy, cache)
    for p, expected in zip(layer.parameters(), whole):
        numpy.testing.assert_allclose(p.grad, 2 * expected, rtol=1e-14)


@pytest.mark.parametrize("cls, kernel", [(nn.Conv1d, 5), (nn.Conv2d, (3, 2))])
def test_conv_init_and_state_dict_are_torchs(cls, kernel):
    nn.manual_seed(0)
    layer = cls(6, 40, kernel)
    reference = getattr(torch.nn, cls.__name__)(6, 40, kernel)
    for name, value in layer.state_dict().items():
        assert value.shape == tuple(reference.state_dict()[name].shape), name
    bound = 1 / math.sqrt(6 * math.prod(layer.kernel_size))
    for values in (layer.weight.data, layer.bias.data):
        assert values.dtype == numpy.float32
        assert numpy.abs(values).max() <= bound and numpy.abs(values).max() > 0.9 * bound
    assert layer.weight.data.std() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    reference.load_state_dict({name: torch.tensor(value) for name, value in layer.state_dict().items()})
    x = numpy.random.default_rng(1).standard_normal((2, 6) + (9,) * layer.dims).astype(numpy.float32)
    numpy.testing.assert_allclose(layer(x), reference(torch.tensor(x)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_conv_errors_name_the_values_and_the_fix():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=2)
    with pytest.raises(ValueError, match="expects 3 input channels but got 2"):
        conv.forward(numpy.zeros((1, 2, 8, 8), numpy.float32))
    with pytest.raises(ValueError, match=r"4-D input .*got shape \(3, 8, 8\).*x\[None\]"):
        conv.forward(numpy.zeros((3, 8, 8), numpy.float32))
    with pytest.raises(ValueError, match=r"spatial size \(2, 9\) with kernel_size=\(3, 3\), stride=\(2, 2\), "
                                         r"padding=\(1, 1\), dilation=\(2, 2\) gives an output of size \(0, 4\)"):
        conv.forward(numpy.zeros((1, 3, 2, 9), numpy.float32))
    with pytest.raises(ValueError, match="groups=1 only, got groups=2"):
        nn.Conv1d(4, 4, 3, groups=2)
    with pytest.raises(TypeError, match="float64 input"):
        conv.forward(numpy.zeros((1, 3, 8, 8)))
    with pytest.raises(TypeError, match="sequence of 2 ints"):
        nn.Conv2d(3, 4, (3, 3, 3))
    with pytest.raises(ValueError, match="output gradient of shape"):
        y, cache = conv.forward(numpy.zeros((1, 3, 8, 8), numpy.float32))
        conv.backward(numpy.zeros((1, 4, 4, 3), numpy.float32), cache)


# --- pooling ----------------------------------------------------------------------------------------
POOL_CASES = [
    ("MaxPool1d", (2, 3, 11), dict(kernel_size=3)),
    ("MaxPool1d", (2, 2, 12), dict(kernel_size=4, stride=2, padding=2)),
    ("MaxPool1d", (1, 2, 13), dict(kernel_size=3, stride=2, padding=1, dilation=2)),
    ("MaxPool2d", (2, 3, 8, 7), dict(kernel_size=2)),
    ("MaxPool2d", (2, 2, 9, 9), dict(kernel_size=(3, 2), stride=(2, 1), padding=1)),
    ("AvgPool1d", (2, 3, 11), dict(kernel_size=3)),
    ("AvgPool1d", (2, 2, 12), dict(kernel_size=4, stride=2, padding=2)),
    ("AvgPool1d", (2, 2, 12), dict(kernel_size=4, stride=3, padding=2, count_include_pad=False)),
    ("AvgPool2d", (2, 3, 8, 7), dict(kernel_size=2)),
    ("AvgPool2d", (2, 2, 9, 9), dict(kernel_size=(3, 2), stride=(2, 1), padding=1)),
    ("AdaptiveAvgPool1d", (3, 4, 7), dict(output_size=1)),
    ("AdaptiveAvgPool2d", (3, 4, 5, 6), dict(output_size=(1, 1))),
]


def pool_id(case) -> str:
    return f"{case[0]}-{case[1]}-" + "-".join(f"{k}{v}" for k, v in case[2].items())


def compare_with_torch(layer, reference, x, dtype, xp):
    tx = torch.tensor(x, requires_grad=True)
    ty = reference(tx)
    dy = numpy.random.default_rng(5).standard_normal(tuple(ty.shape)).astype(dtype)
    ty.backward(torch.tensor(dy))
    y, cache = layer.forward(xp.asarray(x))
    dx = layer.backward(xp.asarray(dy), cache)
    tolerance = dict(rtol=1e-10, atol=1e-12) if dtype == numpy.float64 else dict(rtol=1e-5, atol=1e-6)
    assert y.dtype == dx.dtype == dtype
    numpy.testing.assert_allclose(to_numpy(y), ty.detach().numpy(), **tolerance)
    numpy.testing.assert_allclose(to_numpy(dx), tx.grad.numpy(), **tolerance)


@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_pooling_matches_torch(case, dtype, xp):
    name, shape, options = case
    x = numpy.random.default_rng(2).standard_normal(shape).astype(dtype)
    compare_with_torch(getattr(nn, name)(**options), getattr(torch.nn, name)(**options), x, dtype, xp)


@pytest.mark.parametrize("case", [c for c in POOL_CASES if c[0].startswith("MaxPool")], ids=pool_id)
def test_max_pooling_sends_the_gradient_to_the_first_of_tied_maxima(case, xp):
    name, shape, options = case
    x = numpy.random.default_rng(4).integers(0, 3, shape).astype(numpy.float64)  # many ties
    compare_with_torch(getattr(nn, name)(**options), getattr(torch.nn, name)(**options), x, numpy.float64, xp)


@pytest.mark.parametrize("case", POOL_CASES, ids=pool_id)
def test_pooling_gradcheck(case, xp):
    name, shape, options = case
    x = numpy.random.default_rng(6).standard_normal(shape)  # distinct values: max pooling is differentiable
    nn.gradcheck(getattr(nn, name)(**options), xp.asarray(x))


def test_pooling_errors():
    with pytest.raises(ValueError, match="output_size=1 only.*got 2"):
        nn.AdaptiveAvgPool1d(2)
    with pytest.raises(ValueError, match=r"padding \(2,\) must be at most half the kernel size \(3,\)"):
        nn.MaxPool1d(3, padding=2)
    with pytest.raises(ValueError, match="3-D input"):
        nn.AvgPool1d(2).forward(numpy.zeros((2, 8), numpy.float32))
    with pytest.raises(ValueError, match="output of size"):
        nn.MaxPool2d(3).forward(numpy.zeros((1, 1, 2, 8), numpy.float32))
    assert nn.MaxPool2d(3).stride == (3, 3)


# --- BatchNorm2d --------------------------------------------------------------------------------------
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm2d_matches_torch_in_training_and_eval(momentum, xp, device):
    layer = nn.BatchNorm2d(3, momentum=momentum, dtype=numpy.float64, device=device)
    reference = torch.nn.BatchNorm2d(3, momentum=momentum).double()
    rng = numpy.random.default_rng(0)
    for step in range(3):
        x = rng.standard_normal((4, 3, 5, 6)) * (step + 1) + step
        with torch.no_grad():
            reference.weight.copy_(torch.tensor(rng.standard_normal(3)))
        layer.weight.data[...] = xp.asarray(reference.weight.detach().numpy())
        layer.zero_grad()
        compare_with_torch(layer, reference, x, numpy.float64, xp)
        numpy.testing.assert_allclose(to_numpy(layer.weight.grad), reference.weight.grad.numpy(), rtol=1e-10)
        numpy.testing.assert_allclose(to_numpy(layer.bias.grad), reference.bias.grad.numpy(), rtol=1e-10)
        reference.zero_grad()
    for name in ("running_mean", "running_var"):
        numpy.testing.assert_allclose(to_numpy(getattr(layer, name)), getattr(reference, name).numpy(), rtol=1e-12)
    layer.eval(), reference.eval()
    compare_with_torch(layer, reference, rng.standard_normal((2, 3, 4, 4)), numpy.float64, xp)


def test_batchnorm2d_gradcheck_and_errors(xp, device):
    x = xp.asarray(numpy.random.default_rng(1).standard_normal((3, 2, 4, 3)))
    nn.gradcheck(nn.BatchNorm2d(2, device=device), x)
    with pytest.raises(ValueError, match=r"BatchNorm2d\(2.*expects input of shape \(batch, 2, height, width\)"):
        nn.BatchNorm2d(2).forward(numpy.zeros((3, 2, 4), numpy.float32))
    with pytest.raises(ValueError, match="BatchNorm2d num_features"):
        nn.BatchNorm2d(0)


def test_batchnorm1d_still_normalises_length_inputs_like_torch():
    x = numpy.random.default_rng(3).standard_normal((4, 3, 7))
    compare_with_torch(nn.BatchNorm1d(3, dtype=numpy.float64), torch.nn.BatchNorm1d(3).double(), x, numpy.float64,
                       numpy)


# --- a whole network --------------------------------------------------------------------------------
def test_small_cnn_matches_the_same_torch_model():
    nn.manual_seed(0)
    ours_model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                               nn.Conv2d(4, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(6, 3)).to(dtype=numpy.float64)
    reference = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                    torch.nn.MaxPool2d(2), torch.nn.Conv2d(4, 6, 3), torch.nn.ReLU(),
                                    torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                    torch.nn.Linear(6, 3)).double()
    state = {name: torch.tensor(value.T if name == "8.weight" else value)
             for name, value in ours_model.state_dict().items()}
    reference.load_state_dict(state, strict=False)
    x = numpy.random.default_rng(0).standard_normal((5, 1, 8, 8))
    tx = torch.tensor(x, requires_grad=True)
    reference(tx).sum().backward()
    y, cache = ours_model.forward(x)
    dx = ours_model.backward(numpy.ones_like(y), cache)
    numpy.testing.assert_allclose(y, reference(torch.tensor(x)).detach().numpy(), rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    torch_grads = dict(reference.named_parameters())
    for name, p in ours_model.named_parameters():
        expected = torch_grads[name].grad.numpy()
        numpy.testing.assert_allclose(p.grad, expected.T if name == "8.weight" else expected, rtol=1e-9, atol=1e-12)
