"""gradient_norms and gradient_health: per-parameter norms and the vanishing/exploding/non-finite report."""
from __future__ import annotations

import math

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network import backend


def model_with_grads(xp, device) -> nn.Sequential:
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4, device=device), nn.ReLU(), nn.Linear(4, 2, device=device))
    x = xp.asarray(numpy.random.default_rng(0).standard_normal((5, 3)).astype(numpy.float32))
    model(x)
    model.backward(xp.ones((5, 2), dtype=numpy.float32))
    return model


def test_gradient_norms_are_the_l2_norm_of_each_grad(xp, device):
    model = model_with_grads(xp, device)
    norms = nn.gradient_norms(model)
    assert list(norms) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    for name, p in model.named_parameters():
        assert norms[name] == pytest.approx(float(numpy.linalg.norm(backend.to_numpy(p.grad))), rel=1e-6)
    assert norms["2.bias"] == pytest.approx(math.sqrt(2 * 5**2), rel=1e-6)  # dout of ones summed over 5 rows


def test_gradient_health_sorts_parameters_into_the_three_complaints(xp, device):
    model = model_with_grads(xp, device)
    model[0].bias.grad[...] = 0.0
    model[2].weight.grad[...] = 1e4
    model[2].bias.grad[0] = float("nan")
    report = nn.gradient_health(model)
    assert report == {"vanishing": ["0.bias"], "exploding": ["2.weight"], "non_finite": ["2.bias"]}


def test_gradient_health_of_a_healthy_model_is_empty(xp, device):
    assert nn.gradient_health(model_with_grads(xp, device)) == {"vanishing": [], "exploding": [], "non_finite": []}


def test_gradient_health_thresholds_are_adjustable(xp, device):
    model = model_with_grads(xp, device)
    norms = nn.gradient_norms(model)
    report = nn.gradient_health(model, vanishing_below=min(norms.values()) * 1.01, exploding_above=max(norms.values()) * 0.99)
    assert report["vanishing"] == [min(norms, key=norms.get)]
    assert report["exploding"] == [max(norms, key=norms.get)]
