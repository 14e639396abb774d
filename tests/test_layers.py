"""Linear, Flatten, Dropout and BatchNorm1d: values against closed forms and PyTorch, and gradient checks."""
from __future__ import annotations

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network import backend

DTYPES = [numpy.float32, numpy.float64]
TOLERANCE = {numpy.float32: dict(rtol=1e-5, atol=1e-5), numpy.float64: dict(rtol=1e-12, atol=1e-12)}


def host(array) -> numpy.ndarray:
    return backend.to_numpy(array)


def normal(shape, seed=0, dtype=numpy.float64) -> numpy.ndarray:
    return numpy.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --- Linear ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_forward_and_backward_match_the_closed_form(xp, device, dtype):
    layer = nn.Linear(4, 3, dtype=dtype, device=device)
    x, dy = normal((5, 4), 1, dtype), normal((5, 3), 2, dtype)
    weight, bias = host(layer.weight.data), host(layer.bias.data)

    y, cache = layer.forward(xp.asarray(x))
    dx = layer.backward(xp.asarray(dy), cache)

    assert y.dtype == dtype and dx.dtype == dtype and backend.get_array_module(y) is xp
    numpy.testing.assert_allclose(host(y), x @ weight + bias, **TOLERANCE[dtype])
    numpy.testing.assert_allclose(host(dx), dy @ weight.T, **TOLERANCE[dtype])
    numpy.testing.assert_allclose(host(layer.weight.grad), x.T @ dy, **TOLERANCE[dtype])
    numpy.testing.assert_allclose(host(layer.bias.grad), dy.sum(axis=0), **TOLERANCE[dtype])


def test_linear_gradients_accumulate_in_place(xp, device):
    layer = nn.Linear(3, 2, device=device)
    grad_before = layer.weight.grad
    x, dy = xp.asarray(normal((4, 3), 1, numpy.float32)), xp.asarray(normal((4, 2), 2, numpy.float32))
    for _ in range(2):
        _, cache = layer.forward(x)
        layer.backward(dy, cache)
    assert layer.weight.grad is grad_before
    numpy.testing.assert_allclose(host(layer.weight.grad), 2 * host(x).T @ host(dy), rtol=1e-5)


def test_linear_without_bias_has_only_a_weight(xp, device):
    layer = nn.Linear(3, 2, bias=False, device=device)
    x = normal((4, 3), 1, numpy.float32)
    y, _ = layer.forward(xp.asarray(x))
    assert [name for name, _ in layer.named_parameters()] == ["weight"]
    numpy.testing.assert_allclose(host(y), x @ host(layer.weight.data), rtol=1e-5)


def test_linear_default_init_is_within_one_over_sqrt_fan_in():
    nn.manual_seed(0)
    layer = nn.Linear(64, 200)
    bound = 1 / numpy.sqrt(64)
    assert layer.weight.dtype == numpy.float32
    assert numpy.abs(layer.weight.data).max() <= bound
    assert numpy.abs(layer.bias.data).max() <= bound
    assert numpy.abs(layer.weight.data).max() > 0.95 * bound  # spans the interval, not a narrower one


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck(xp, device, bias):
    layer = nn.Linear(4, 3, bias=bias, device=device)
    result = nn.gradcheck(layer, xp.asarray(normal((5, 4), 3)))
    assert set(result.max_abs_error) == {"input", "weight"} | ({"bias"} if bias else set())


def test_linear_matches_torch():
    torch = pytest.importorskip("torch")
    layer = nn.Linear(4, 3, dtype=numpy.float64)
    x, dy = normal((5, 4), 1), normal((5, 3), 2)
    y, cache = layer.forward(x)
    dx = layer.backward(dy, cache)

    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(layer.weight.data.T.copy(), requires_grad=True)  # torch stores (out, in)
    tb = torch.tensor(layer.bias.data.copy(), requires_grad=True)
    ty = torch.nn.functional.linear(tx, tw, tb)
    ty.backward(torch.tensor(dy))
    numpy.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
    numpy.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)
    numpy.testing.assert_allclose(layer.weight.grad, tw.grad.numpy().T, rtol=1e-12)
    numpy.testing.assert_allclose(layer.bias.grad, tb.grad.numpy(), rtol=1e-12)


# --- Flatten --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_flatten_reshapes_forward_and_back(xp, dtype):
    x = normal((2, 3, 4), 1, dtype)
    layer = nn.Flatten()
    y, cache = layer.forward(xp.asarray(x))
    dx = layer.backward(y * 2, cache)
    assert y.shape == (2, 12) and y.dtype == dtype
    numpy.testing.assert_array_equal(host(y), x.reshape(2, 12))
    numpy.testing.assert_array_equal(host(dx), 2 * x)


def test_flatten_gradcheck(xp):
    nn.gradcheck(nn.Flatten(), xp.asarray(normal((2, 3, 2), 4)))


# --- Dropout --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_zeroes_about_p_and_scales_the_rest(xp, dtype):
    nn.manual_seed(0)
    p = 0.3
    x = numpy.ones((200, 100), dtype=dtype) + normal((200, 100), 1, dtype) ** 2  # all > 0
    layer = nn.Dropout(p)
    y, mask = layer.forward(xp.asarray(x))
    dx = layer.backward(xp.ones_like(y), mask)
    y, dx = host(y), host(dx)

    assert y.dtype == dtype and dx.dtype == dtype
    dropped = y == 0
    assert abs(dropped.mean() - p) < 0.015  # 20000 Bernoulli(0.3) draws: std 0.0032
    numpy.testing.assert_allclose(y[~dropped], x[~dropped] / (1 - p), **TOLERANCE[dtype])
    numpy.testing.assert_array_equal(dx == 0, dropped)  # the gradient flows exactly where the input did
    numpy.testing.assert_allclose(dx[~dropped], 1 / (1 - p), **TOLERANCE[dtype])


def test_dropout_is_the_identity_in_eval_mode_and_for_p_zero(xp):
    x = xp.asarray(normal((4, 5), 1, numpy.float32))
    for layer in (nn.Dropout(0.5).eval(), nn.Dropout(0.0)):
        y, cache = layer.forward(x)
        numpy.testing.assert_array_equal(host(y), host(x))
        numpy.testing.assert_array_equal(host(layer.backward(x, cache)), host(x))


def test_dropout_masks_repeat_from_the_seed_and_from_an_explicit_generator():
    x = numpy.ones((8, 8), dtype=numpy.float32)
    nn.manual_seed(5)
    first = nn.Dropout(0.5).forward(x)[0]
    nn.manual_seed(5)
    second = nn.Dropout(0.5).forward(x)[0]
    numpy.testing.assert_array_equal(first, second)

    from_generator = [nn.Dropout(0.5, generator=numpy.random.default_rng(7)).forward(x)[0] for _ in range(2)]
    numpy.testing.assert_array_equal(*from_generator)
    assert not numpy.array_equal(first, from_generator[0])


def test_dropout_gradcheck_with_a_seed(xp):
    nn.gradcheck(nn.Dropout(0.4), xp.asarray(normal((6, 5), 5)), seed=3)


def test_dropout_with_its_own_generator_passes_gradcheck():
    nn.gradcheck(nn.Dropout(0.4, generator=numpy.random.default_rng(1)), normal((6, 5), 5), seed=3)
    nested = nn.Sequential(nn.Linear(5, 4), nn.Sequential(nn.Dropout(0.4, generator=numpy.random.default_rng(2))))
    nn.gradcheck(nested, normal((6, 5), 5), seed=3)


# --- BatchNorm1d ----------------------------------------------------------------------------


def _batchnorm_with_affine(num_features, dtype, device) -> nn.BatchNorm1d:
    layer = nn.BatchNorm1d(num_features, dtype=dtype, device=device)
    xp = backend.get_array_module(layer.weight.data)
    layer.weight.data[...] = xp.asarray(1.5 + 0.1 * numpy.arange(num_features), dtype=dtype)
    layer.bias.data[...] = -0.2
    return layer


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_training_forward_and_running_statistics(xp, device, dtype):
    layer = _batchnorm_with_affine(3, dtype, device)
    x = 2.0 + 3.0 * normal((8, 3), 1, dtype)
    y, _ = layer.forward(xp.asarray(x))

    reference = x.astype(numpy.float64)
    mean, var = reference.mean(axis=0), reference.var(axis=0)
    expected = (reference - mean) / numpy.sqrt(var + 1e-5) * host(layer.weight.data) + host(layer.bias.data)
    numpy.testing.assert_allclose(host(y), expected, **TOLERANCE[dtype])
    numpy.testing.assert_allclose(host(layer.running_mean), 0.1 * mean, **TOLERANCE[dtype])
    numpy.testing.assert_allclose(host(layer.running_var), 0.9 + 0.1 * reference.var(axis=0, ddof=1),
                                  **TOLERANCE[dtype])
    assert y.dtype == dtype and layer.running_mean.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_eval_uses_running_statistics(xp, device, dtype):
    layer = _batchnorm_with_affine(3, dtype, device)
    layer.running_mean[...] = xp.asarray(numpy.array([0.5, -1.0, 2.0], dtype=dtype))
    layer.running_var[...] = xp.asarray(numpy.array([4.0, 0.25, 1.0], dtype=dtype))
    layer.eval()
    x = normal((4, 3), 1, dtype)
    y, _ = layer.forward(xp.asarray(x))
    expected = ((x - [0.5, -1.0, 2.0]) / numpy.sqrt(numpy.array([4.0, 0.25, 1.0]) + 1e-5)
                * host(layer.weight.data) + host(layer.bias.data))
    numpy.testing.assert_allclose(host(y), expected, **TOLERANCE[dtype])
    numpy.testing.assert_array_equal(host(layer.running_mean), numpy.array([0.5, -1.0, 2.0], dtype=dtype))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_gradcheck(xp, device, training):
    layer = _batchnorm_with_affine(4, numpy.float32, device)
    layer.running_mean[...] = 0.3
    layer.running_var[...] = 2.0
    layer.train(training)
    result = nn.gradcheck(layer, xp.asarray(1.0 + 2.0 * normal((6, 4), 7)))
    assert set(result.max_abs_error) == {"input", "weight", "bias"}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batchnorm_matches_torch(training):
    torch = pytest.importorskip("torch")
    layer = _batchnorm_with_affine(3, numpy.float64, "cpu")
    reference = torch.nn.BatchNorm1d(3).double()
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(layer.weight.data))
        reference.bias.copy_(torch.tensor(layer.bias.data))
        reference.running_mean.fill_(0.3)
        reference.running_var.fill_(2.0)
    layer.running_mean[...] = 0.3
    layer.running_var[...] = 2.0
    layer.train(training)
    reference.train(training)

    x, dy = 1.0 + 2.0 * normal((6, 3), 1), normal((6, 3), 2)
    y, cache = layer.forward(x)
    dx = layer.backward(dy, cache)
    tx = torch.tensor(x, requires_grad=True)
    ty = reference(tx)
    ty.backward(torch.tensor(dy))

    numpy.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(layer.weight.grad, reference.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(layer.bias.grad, reference.bias.grad.numpy(), rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(layer.running_mean, reference.running_mean.numpy(), rtol=1e-12)
    numpy.testing.assert_allclose(layer.running_var, reference.running_var.numpy(), rtol=1e-12)


def test_batchnorm_buffers_are_in_the_state_dict_but_not_parameters():
    layer = nn.BatchNorm1d(3)
    assert [name for name, _ in layer.named_parameters()] == ["weight", "bias"]
    assert sorted(layer.state_dict()) == ["bias", "running_mean", "running_var", "weight"]
