"""L1 and L2 penalties: values against closed forms, gradients against central differences."""
from __future__ import annotations

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network import backend


def params(xp) -> list[nn.Parameter]:
    rng = numpy.random.default_rng(0)
    return [nn.Parameter(xp.asarray(rng.standard_normal((3, 4)))), nn.Parameter(xp.asarray(rng.standard_normal(4)))]


def central_difference(penalty, parameters, strength: float, eps: float = 1e-6) -> list[numpy.ndarray]:
    """d penalty / d p for each parameter, from the returned values alone."""
    gradients = []
    for p in parameters:
        gradient = numpy.zeros(p.shape)
        for index in numpy.ndindex(p.shape):
            original = float(p.data[index])
            p.data[index] = original + eps
            plus = penalty(parameters, strength)
            p.data[index] = original - eps
            minus = penalty(parameters, strength)
            p.data[index] = original
            gradient[index] = (plus - minus) / (2 * eps)
        gradients.append(gradient)
    return gradients


@pytest.mark.parametrize("penalty, closed_form", [
    (nn.l1_penalty, lambda arrays, s: s * sum(numpy.abs(a).sum() for a in arrays)),
    (nn.l2_penalty, lambda arrays, s: 0.5 * s * sum((a * a).sum() for a in arrays)),
], ids=["l1", "l2"])
def test_penalty_value_and_gradient(xp, penalty, closed_form):
    parameters = params(xp)
    existing = [backend.to_numpy(p.grad).copy() + 1.0 for p in parameters]
    for p in parameters:
        p.grad += 1.0  # the penalty adds to what backward already accumulated
    value = penalty(parameters, 0.3)
    assert value == pytest.approx(closed_form([backend.to_numpy(p.data) for p in parameters], 0.3), rel=1e-12)
    numeric = central_difference(lambda ps, s: penalty([nn.Parameter(p.data) for p in ps], s), parameters, 0.3)
    for p, before, expected in zip(parameters, existing, numeric):
        numpy.testing.assert_allclose(backend.to_numpy(p.grad) - before, expected, rtol=1e-6, atol=1e-8)


def test_l2_penalty_with_sgd_equals_weight_decay():
    rng = numpy.random.default_rng(1)
    start, gradient = rng.standard_normal(5), rng.standard_normal(5)
    penalised, decayed = nn.Parameter(start.copy()), nn.Parameter(start.copy())
    penalised_optimizer = nn.optim.SGD([penalised], lr=0.1, momentum=0.9)
    decayed_optimizer = nn.optim.SGD([decayed], lr=0.1, momentum=0.9, weight_decay=0.05)
    for _ in range(3):
        for p, optimizer in ((penalised, penalised_optimizer), (decayed, decayed_optimizer)):
            optimizer.zero_grad()
            p.grad += gradient
        nn.l2_penalty([penalised], 0.05)
        penalised_optimizer.step()
        decayed_optimizer.step()
    numpy.testing.assert_allclose(penalised.data, decayed.data, rtol=1e-12)


def test_weights_only_skips_biases_and_normalisation_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2, bias=False))
    assert nn.weights_only(model.named_parameters()) == [model[0].weight, model[3].weight]


def test_penalties_reject_a_negative_strength():
    with pytest.raises(ValueError, match="L1 strength must be >= 0, got -0.1"):
        nn.l1_penalty(params(numpy), -0.1)
    with pytest.raises(ValueError, match="L2 strength must be >= 0, got -2"):
        nn.l2_penalty(params(numpy), -2)
