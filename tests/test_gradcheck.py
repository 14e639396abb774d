"""mpiprop.network.layers.gradcheck on whole models (dropout, batch norm in both modes), and that it catches wrong gradients."""
from __future__ import annotations

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network import backend


def batch(xp, shape, seed=0):
    return xp.asarray(numpy.random.default_rng(seed).standard_normal(shape).astype(numpy.float32))


def deep_model(device: str) -> nn.Sequential:
    nn.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(6, 8, device=device), nn.BatchNorm1d(8, device=device), nn.ELU(),
        nn.Dropout(0.3), nn.Linear(8, 8, device=device), nn.GELU(), nn.Linear(8, 5, device=device),
        nn.LeakyReLU(0.1), nn.Linear(5, 4, device=device), nn.Tanh(), nn.Linear(4, 3, device=device), nn.Softmax(),
    )


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_whole_model_gradcheck(xp, device, training):
    model = deep_model(device)
    model[2].running_mean[...] = 0.1
    model[2].running_var[...] = 1.7
    model.train(training)
    result = nn.gradcheck(model, batch(xp, (5, 2, 3)), seed=4)
    assert set(result.max_abs_error) == {"input"} | {name for name, _ in model.named_parameters()}


def test_gradcheck_with_max_elements_on_a_wider_model(xp, device):
    nn.manual_seed(1)
    model = nn.Sequential(nn.Linear(40, 64, device=device), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10, device=device))
    nn.gradcheck(model, batch(xp, (8, 40)), max_elements=12, seed=2)


def test_gradcheck_leaves_the_model_untouched(xp, device):
    model = deep_model(device)
    before = {name: backend.to_numpy(value).copy() for name, value in model.state_dict().items()}
    nn.gradcheck(model, batch(xp, (5, 6)), max_elements=4)
    for name, value in model.state_dict().items():
        assert value.dtype == numpy.float32, name
        numpy.testing.assert_array_equal(backend.to_numpy(value), before[name], err_msg=name)
    assert all(not numpy.any(backend.to_numpy(p.grad)) for p in model.parameters())


class _WrongWeightGradient(nn.Linear):
    """A Linear whose weight gradient is off by 1% (a subtle bug gradcheck must see)."""

    def backward_weight(self, dy, x):
        self.weight.grad += 1.01 * (x.T @ dy)
        self.bias.grad += dy.sum(axis=0)


class _WrongInputGradient(nn.Tanh):
    """A Tanh that forgets the derivative: passes dy straight through."""

    def backward_input(self, dy, y):
        return dy


def test_gradcheck_catches_a_wrong_weight_gradient():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), _WrongWeightGradient(4, 2))
    with pytest.raises(nn.GradcheckError, match=r"2\.weight: at index"):
        nn.gradcheck(model, batch(numpy, (5, 3)))


def test_gradcheck_catches_a_wrong_input_gradient():
    model = nn.Sequential(nn.Linear(3, 4), _WrongInputGradient(), nn.Linear(4, 2))
    with pytest.raises(nn.GradcheckError, match=r"input: at index[\s\S]*0\.weight: at index"):
        nn.gradcheck(model, batch(numpy, (5, 3)))


def test_gradcheck_catches_dropout_masks_that_differ_from_the_forward():
    class _FreshMaskDropout(nn.Dropout):
        def backward_input(self, dy, mask):
            return dy * mask[::-1]  # a mask from another sample

    with pytest.raises(nn.GradcheckError):
        nn.gradcheck(_FreshMaskDropout(0.5), batch(numpy, (6, 4)), seed=1)
