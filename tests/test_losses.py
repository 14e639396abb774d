"""MSELoss, CrossEntropyLoss and BCEWithLogitsLoss: values against closed forms and PyTorch, gradients
against central differences of the loss value."""
from __future__ import annotations

import numpy
import pytest
import scipy.special

import mpiprop.network as nn
from mpiprop.network import backend

DTYPES = [numpy.float32, numpy.float64]
TOLERANCE = {numpy.float32: dict(rtol=1e-5, atol=1e-6), numpy.float64: dict(rtol=1e-12, atol=1e-14)}


def _regression_case():
    rng = numpy.random.default_rng(0)
    return rng.standard_normal((5, 3)), rng.standard_normal((5, 3))


def _classification_case():
    rng = numpy.random.default_rng(1)
    return rng.standard_normal((6, 4)) * 2, numpy.array([0, 3, 1, 1, 2, 3])


def _binary_case():
    rng = numpy.random.default_rng(2)
    return rng.standard_normal((5, 2)) * 3, numpy.array([[0, 1], [1, 1], [0, 0], [0.3, 1], [1, 0.75]])


def _mse_reference(pred, target):
    return numpy.mean((pred - target) ** 2), 2 * (pred - target) / pred.size


def _cross_entropy_reference(logits, labels):
    log_softmax = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    onehot = numpy.eye(logits.shape[1])[labels]
    return -numpy.mean(log_softmax[numpy.arange(len(labels)), labels]), (numpy.exp(log_softmax) - onehot) / len(labels)


def _bce_reference(logits, target):
    value = numpy.mean(numpy.logaddexp(0, logits) - target * logits)
    return value, (scipy.special.expit(logits) - target) / logits.size


CASES = {
    "mse": (nn.MSELoss, _regression_case, _mse_reference),
    "cross_entropy": (nn.CrossEntropyLoss, _classification_case, _cross_entropy_reference),
    "bce_with_logits": (nn.BCEWithLogitsLoss, _binary_case, _bce_reference),
}


def central_difference_gradient(loss_fn, pred: numpy.ndarray, target, eps: float = 1e-6) -> numpy.ndarray:
    """d loss / d pred, one element at a time, from the loss value alone (float64)."""
    xp = backend.get_array_module(target)
    gradient = numpy.zeros_like(pred)
    for index in numpy.ndindex(pred.shape):
        plus, minus = pred.copy(), pred.copy()
        plus[index] += eps
        minus[index] -= eps
        gradient[index] = (loss_fn(xp.asarray(plus), target) - loss_fn(xp.asarray(minus), target)) / (2 * eps)
    return gradient


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_value_and_gradient_match_the_closed_form(xp, name, dtype):
    loss_class, make_case, reference = CASES[name]
    pred, target = make_case()
    expected_value, expected_grad = reference(pred, target)
    loss_fn = loss_class()

    value = loss_fn(xp.asarray(pred.astype(dtype)), xp.asarray(target))
    grad = loss_fn.backward()

    assert isinstance(value, float)
    assert grad.dtype == dtype and grad.shape == pred.shape and backend.get_array_module(grad) is xp
    numpy.testing.assert_allclose(value, expected_value, **TOLERANCE[dtype])
    numpy.testing.assert_allclose(backend.to_numpy(grad), expected_grad, **TOLERANCE[dtype])


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_backward_matches_central_differences(xp, name):
    loss_class, make_case, _ = CASES[name]
    pred, target = make_case()
    loss_fn = loss_class()
    loss_fn(xp.asarray(pred), xp.asarray(target))
    analytic = backend.to_numpy(loss_fn.backward())
    numeric = central_difference_gradient(loss_class(), pred, xp.asarray(target))
    numpy.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_explicit_caches_allow_several_batches_in_flight(name):
    loss_class, make_case, reference = CASES[name]
    pred, target = make_case()
    loss_fn = loss_class()
    first_value, first_cache = loss_fn.forward(pred, target)
    second_value, second_cache = loss_fn.forward(pred[::-1].copy(), target[::-1].copy())
    numpy.testing.assert_allclose(loss_fn.backward(first_cache), reference(pred, target)[1], rtol=1e-12)
    numpy.testing.assert_allclose(loss_fn.backward(second_cache), reference(pred[::-1], target[::-1])[1],
                                  rtol=1e-12)
    assert first_value == pytest.approx(reference(pred, target)[0], rel=1e-12)


def test_backward_before_any_loss_raises():
    with pytest.raises(RuntimeError, match="MSELoss.backward called before the loss was computed"):
        nn.MSELoss().backward()


def test_remembered_backward_is_used_once():
    loss_fn = nn.MSELoss()
    pred, target = _regression_case()
    loss_fn(pred, target)
    loss_fn.backward()
    with pytest.raises(RuntimeError, match="before the loss was computed"):
        loss_fn.backward()


def test_cross_entropy_is_stable_for_huge_logits(xp):
    logits = numpy.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 1e4]], dtype=numpy.float32)
    loss_fn = nn.CrossEntropyLoss()
    with numpy.errstate(over="raise", invalid="raise", divide="raise"):
        value = loss_fn(xp.asarray(logits), xp.asarray(numpy.array([1, 2])))
        grad = backend.to_numpy(loss_fn.backward())
    assert value == pytest.approx(1000.0 / 2, rel=1e-6)
    numpy.testing.assert_allclose(grad, [[0.5, -0.5, 0.0], [0.0, 0.0, 0.0]], atol=1e-6)


def test_bce_with_logits_is_stable_for_huge_logits(xp):
    logits = numpy.array([[-200.0, 200.0, 200.0, -200.0]], dtype=numpy.float32)
    target = numpy.array([[0.0, 1.0, 0.0, 1.0]], dtype=numpy.float32)
    loss_fn = nn.BCEWithLogitsLoss()
    with numpy.errstate(over="raise", invalid="raise", divide="raise"):
        value = loss_fn(xp.asarray(logits), xp.asarray(target))
        grad = backend.to_numpy(loss_fn.backward())
    assert value == pytest.approx(400.0 / 4, rel=1e-6)
    numpy.testing.assert_allclose(grad, [[0.0, 0.0, 0.25, -0.25]], atol=1e-7)


def test_mse_accepts_a_target_of_another_float_dtype():
    pred, target = _regression_case()
    loss_fn = nn.MSELoss()
    value = loss_fn(pred.astype(numpy.float32), target)
    assert loss_fn.backward().dtype == numpy.float32
    assert value == pytest.approx(_mse_reference(pred, target)[0], rel=1e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_losses_match_torch(name):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    loss_class, make_case, _ = CASES[name]
    pred, target = make_case()
    loss_fn = loss_class()
    value = loss_fn(pred, target)
    grad = loss_fn.backward()

    tpred = torch.tensor(pred, requires_grad=True)
    ttarget = torch.tensor(target)
    torch_loss = {
        "mse": functional.mse_loss,
        "cross_entropy": functional.cross_entropy,
        "bce_with_logits": functional.binary_cross_entropy_with_logits,
    }[name](tpred, ttarget)
    torch_loss.backward()
    assert value == pytest.approx(torch_loss.item(), rel=1e-12)
    numpy.testing.assert_allclose(grad, tpred.grad.numpy(), rtol=1e-10, atol=1e-15)
