"""Activations: values and derivatives against closed forms and PyTorch, and gradient checks."""
from __future__ import annotations

import math

import numpy
import pytest
import scipy.special

import mpiprop.network as nn
from mpiprop.network import backend

DTYPES = [numpy.float32, numpy.float64]
TOLERANCE = {numpy.float32: dict(rtol=2e-6, atol=2e-7), numpy.float64: dict(rtol=1e-13, atol=1e-15)}


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _elementwise(function):
    return lambda x: numpy.vectorize(function, otypes=[numpy.float64])(x)


# (layer factory, value closed form, derivative closed form), each written independently with `math`.
ELEMENTWISE = {
    "sigmoid": (nn.Sigmoid, _elementwise(lambda v: 1 / (1 + math.exp(-v))),
                _elementwise(lambda v: math.exp(-v) / (1 + math.exp(-v)) ** 2)),
    "tanh": (nn.Tanh, _elementwise(math.tanh), _elementwise(lambda v: 1 / math.cosh(v) ** 2)),
    "relu": (nn.ReLU, _elementwise(lambda v: max(v, 0.0)), _elementwise(lambda v: float(v > 0))),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), _elementwise(lambda v: v if v > 0 else 0.2 * v),
                   _elementwise(lambda v: 1.0 if v > 0 else 0.2)),
    "elu": (lambda: nn.ELU(1.3), _elementwise(lambda v: v if v > 0 else 1.3 * (math.exp(v) - 1)),
            _elementwise(lambda v: 1.0 if v > 0 else 1.3 * math.exp(v))),
    "gelu": (nn.GELU, _elementwise(lambda v: v * _normal_cdf(v)),
             _elementwise(lambda v: _normal_cdf(v) + v * _normal_pdf(v))),
}


def _inputs(dtype) -> numpy.ndarray:
    """A (4, 6) batch spanning both signs, away from the kinks at 0."""
    x = numpy.linspace(-4.0, 4.0, 24).reshape(4, 6)
    x[numpy.abs(x) < 0.05] = 0.3
    return x.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_value_and_derivative_match_the_closed_form(xp, name, dtype):
    factory, value, derivative = ELEMENTWISE[name]
    x = _inputs(dtype)
    dy = numpy.random.default_rng(1).standard_normal(x.shape).astype(dtype)
    layer = factory()

    y, cache = layer.forward(xp.asarray(x))
    dx = layer.backward(xp.asarray(dy), cache)

    assert y.dtype == dtype and dx.dtype == dtype and backend.get_array_module(y) is xp
    numpy.testing.assert_allclose(backend.to_numpy(y), value(x.astype(numpy.float64)), **TOLERANCE[dtype])
    numpy.testing.assert_allclose(backend.to_numpy(dx), dy * derivative(x.astype(numpy.float64)),
                                  **TOLERANCE[dtype])


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise_gradcheck(xp, name):
    nn.gradcheck(ELEMENTWISE[name][0](), xp.asarray(_inputs(numpy.float64)))


def test_sigmoid_saturates_without_overflow(xp):
    x = xp.asarray(numpy.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]], dtype=numpy.float32))
    with numpy.errstate(over="raise", invalid="raise", divide="raise"):
        y = backend.to_numpy(nn.Sigmoid().forward(x)[0])
    numpy.testing.assert_allclose(y, [[0.0, scipy.special.expit(-50.0), 0.5, 1.0, 1.0]], atol=1e-30)


def test_gelu_is_the_exact_erf_form_not_the_tanh_approximation():
    x = numpy.array([[1.0, -2.0]])
    tanh_approximation = 0.5 * x * (1 + numpy.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    exact = x * 0.5 * (1 + scipy.special.erf(x / math.sqrt(2)))
    y = nn.GELU().forward(x)[0]
    numpy.testing.assert_allclose(y, exact, rtol=1e-15)
    assert numpy.abs(y - tanh_approximation).max() > 1e-5


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_value_and_derivative_match_the_closed_form(xp, dtype):
    x = _inputs(dtype)
    dy = numpy.random.default_rng(2).standard_normal(x.shape).astype(dtype)
    y, cache = nn.Softmax().forward(xp.asarray(x))
    dx = nn.Softmax().backward(xp.asarray(dy), cache)

    reference = x.astype(numpy.float64)
    expected = numpy.exp(reference) / numpy.exp(reference).sum(axis=1, keepdims=True)
    jacobians = [numpy.diag(row) - numpy.outer(row, row) for row in expected]  # d softmax_i / d x_j
    expected_dx = numpy.stack([jacobian.T @ g for jacobian, g in zip(jacobians, dy)])
    assert y.dtype == dtype and dx.dtype == dtype
    numpy.testing.assert_allclose(backend.to_numpy(y), expected, **TOLERANCE[dtype])
    numpy.testing.assert_allclose(backend.to_numpy(dx), expected_dx, rtol=TOLERANCE[dtype]["rtol"] * 10,
                                  atol=TOLERANCE[dtype]["atol"] * 10)


def test_softmax_is_stable_for_large_logits_and_respects_the_axis(xp):
    x = numpy.array([[1000.0, 1001.0], [-1000.0, -1000.0]])
    with numpy.errstate(over="raise", invalid="raise", divide="raise"):
        rows = backend.to_numpy(nn.Softmax().forward(xp.asarray(x))[0])
        columns = backend.to_numpy(nn.Softmax(axis=0).forward(xp.asarray(x))[0])
    numpy.testing.assert_allclose(rows, [[1 / (1 + math.e), math.e / (1 + math.e)], [0.5, 0.5]], rtol=1e-12)
    numpy.testing.assert_allclose(columns, [[1.0, 1.0], [0.0, 0.0]], atol=1e-300)


@pytest.mark.parametrize("axis", [-1, 0])
def test_softmax_gradcheck(xp, axis):
    nn.gradcheck(nn.Softmax(axis=axis), xp.asarray(_inputs(numpy.float64)))


TORCH_EQUIVALENTS = {
    "sigmoid": lambda torch, t: torch.sigmoid(t),
    "tanh": lambda torch, t: torch.tanh(t),
    "relu": lambda torch, t: torch.relu(t),
    "leaky_relu": lambda torch, t: torch.nn.functional.leaky_relu(t, 0.2),
    "elu": lambda torch, t: torch.nn.functional.elu(t, 1.3),
    "gelu": lambda torch, t: torch.nn.functional.gelu(t, approximate="none"),
}


@pytest.mark.parametrize("name", sorted(TORCH_EQUIVALENTS) + ["softmax"])
def test_activations_match_torch(name):
    torch = pytest.importorskip("torch")
    layer = nn.Softmax() if name == "softmax" else ELEMENTWISE[name][0]()
    x = _inputs(numpy.float64)
    dy = numpy.random.default_rng(3).standard_normal(x.shape)
    y, cache = layer.forward(x)
    dx = layer.backward(dy, cache)

    tx = torch.tensor(x, requires_grad=True)
    ty = torch.softmax(tx, dim=-1) if name == "softmax" else TORCH_EQUIVALENTS[name](torch, tx)
    ty.backward(torch.tensor(dy))
    numpy.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-15)
    numpy.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-15)
