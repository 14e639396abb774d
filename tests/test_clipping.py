"""Gradient clipping by total norm and by value, against numpy norms and PyTorch."""
from __future__ import annotations

import math

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network import backend


def params_with_grads(xp, scale: float = 1.0) -> list[nn.Parameter]:
    rng = numpy.random.default_rng(0)
    params = [nn.Parameter(xp.zeros((3, 4))), nn.Parameter(xp.zeros(4)), nn.Parameter(xp.zeros((2, 2)))]
    for p in params:
        p.grad += xp.asarray(scale * rng.standard_normal(p.shape))
    return params


def flat_grads(params) -> numpy.ndarray:
    return numpy.concatenate([backend.to_numpy(p.grad).ravel() for p in params])


@pytest.mark.parametrize("norm_type", [1.0, 2.0, math.inf])
def test_total_grad_norm_equals_the_norm_of_the_concatenated_gradients(xp, norm_type):
    params = params_with_grads(xp)
    expected = numpy.linalg.norm(flat_grads(params), ord=norm_type)
    assert nn.total_grad_norm(params, norm_type) == pytest.approx(expected, rel=1e-12)


def test_clip_grad_norm_returns_the_norm_before_and_scales_to_max_norm(xp):
    params = params_with_grads(xp, scale=5.0)
    before = flat_grads(params)
    returned = nn.clip_grad_norm_(params, max_norm=1.5)
    after = flat_grads(params)
    assert returned == pytest.approx(numpy.linalg.norm(before), rel=1e-12)
    assert numpy.linalg.norm(after) == pytest.approx(1.5, rel=1e-5)
    numpy.testing.assert_allclose(after, before * (1.5 / numpy.linalg.norm(before)), rtol=1e-5)


def test_clip_grad_norm_keeps_the_grad_arrays(xp):
    params = params_with_grads(xp, scale=5.0)
    arrays = [p.grad for p in params]
    nn.clip_grad_norm_(params, max_norm=0.1)
    assert all(p.grad is array for p, array in zip(params, arrays))


def test_clip_grad_norm_leaves_small_gradients_alone(xp):
    params = params_with_grads(xp, scale=0.01)
    before = flat_grads(params)
    nn.clip_grad_norm_(params, max_norm=10.0)
    numpy.testing.assert_array_equal(flat_grads(params), before)


def test_clip_grad_norm_with_the_inf_norm(xp):
    params = params_with_grads(xp, scale=5.0)
    returned = nn.clip_grad_norm_(params, max_norm=0.5, norm_type=math.inf)
    assert numpy.abs(flat_grads(params)).max() == pytest.approx(0.5, rel=1e-5)
    assert returned > 0.5


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    params = params_with_grads(numpy, scale=3.0)
    tensors = [torch.zeros(p.shape, dtype=torch.float64, requires_grad=True) for p in params]
    for p, t in zip(params, tensors):
        t.grad = torch.tensor(p.grad.copy())
    returned = nn.clip_grad_norm_(params, max_norm=2.0)
    torch_returned = torch.nn.utils.clip_grad_norm_(tensors, max_norm=2.0)
    assert returned == pytest.approx(float(torch_returned), rel=1e-12)
    for p, t in zip(params, tensors):
        numpy.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12)


def test_clip_grad_value_clamps_each_element(xp):
    params = params_with_grads(xp, scale=2.0)
    before = flat_grads(params)
    nn.clip_grad_value_(params, clip_value=0.7)
    numpy.testing.assert_array_equal(flat_grads(params), numpy.clip(before, -0.7, 0.7))
    assert numpy.any(numpy.abs(before) > 0.7)  # the case really clips something


def test_clipping_rejects_negative_limits_and_bad_norm_types():
    params = params_with_grads(numpy)
    with pytest.raises(ValueError, match="max_norm must be >= 0, got -1"):
        nn.clip_grad_norm_(params, max_norm=-1.0)
    with pytest.raises(ValueError, match="clip_value must be >= 0, got -0.5"):
        nn.clip_grad_value_(params, clip_value=-0.5)
    with pytest.raises(ValueError, match="norm_type must be positive or inf, got 0"):
        nn.total_grad_norm(params, norm_type=0)
