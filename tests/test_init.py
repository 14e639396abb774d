"""Initialisers: Xavier/Kaiming bounds and standard deviations, gains, fans and reproducibility."""
from __future__ import annotations

import math

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network import backend

from mpiprop.network.layers import init
FAN_IN, FAN_OUT = 150, 400  # a (in, out) weight, as Linear stores it; asymmetric so fan mix-ups show


def fresh(xp, shape=(FAN_IN, FAN_OUT), dtype=numpy.float32) -> nn.Parameter:
    return nn.Parameter(xp.zeros(shape, dtype=dtype))


def values(param: nn.Parameter) -> numpy.ndarray:
    return backend.to_numpy(param.data).astype(numpy.float64)


def assert_uniform(sample: numpy.ndarray, bound: float) -> None:
    """U(-bound, bound): inside the bound, reaching close to it, std bound/sqrt(3), mean 0."""
    assert numpy.abs(sample).max() <= bound * (1 + 1e-6)
    assert numpy.abs(sample).max() > 0.99 * bound
    assert sample.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert abs(sample.mean()) < 0.02 * bound


def assert_normal(sample: numpy.ndarray, std: float) -> None:
    """N(0, std²): sample std within 2% (60 000 draws give about 0.3%), mean near 0, tails present."""
    assert sample.std() == pytest.approx(std, rel=0.02)
    assert abs(sample.mean()) < 0.02 * std
    assert numpy.abs(sample).max() > 3 * std


def test_xavier_uniform(xp):
    param = init.xavier_uniform_(fresh(xp), gain=2.0)
    assert_uniform(values(param), 2.0 * math.sqrt(6 / (FAN_IN + FAN_OUT)))


def test_xavier_normal(xp):
    param = init.xavier_normal_(fresh(xp), gain=0.5)
    assert_normal(values(param), 0.5 * math.sqrt(2 / (FAN_IN + FAN_OUT)))


@pytest.mark.parametrize("mode, fan", [("fan_in", FAN_IN), ("fan_out", FAN_OUT)])
def test_kaiming_uniform_relu(xp, mode, fan):
    param = init.kaiming_uniform_(fresh(xp), mode=mode, nonlinearity="relu")
    assert_uniform(values(param), math.sqrt(2) * math.sqrt(3 / fan))


@pytest.mark.parametrize("mode, fan", [("fan_in", FAN_IN), ("fan_out", FAN_OUT)])
def test_kaiming_normal_relu(xp, mode, fan):
    param = init.kaiming_normal_(fresh(xp), mode=mode, nonlinearity="relu")
    assert_normal(values(param), math.sqrt(2) / math.sqrt(fan))


def test_kaiming_defaults_to_leaky_relu_with_slope_a():
    param = init.kaiming_normal_(fresh(numpy), a=0.2)
    assert_normal(values(param), math.sqrt(2 / (1 + 0.2**2)) / math.sqrt(FAN_IN))


def test_initialisers_keep_dtype_and_array_module(xp):
    for dtype in (numpy.float32, numpy.float64):
        param = init.kaiming_uniform_(fresh(xp, (4, 5), dtype))
        assert param.data.dtype == dtype and backend.get_array_module(param.data) is xp


def test_constant_and_zeros(xp):
    param = fresh(xp, (3, 2))
    numpy.testing.assert_array_equal(values(init.constant_(param, 0.25)), 0.25)
    numpy.testing.assert_array_equal(values(init.zeros_(param)), 0.0)


def test_calculate_gain_closed_forms():
    assert init.calculate_gain("linear") == 1.0
    assert init.calculate_gain("sigmoid") == 1.0
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("leaky_relu", 0.1) == pytest.approx(math.sqrt(2 / 1.01))


@pytest.mark.parametrize("nonlinearity", ["linear", "sigmoid", "tanh", "relu", "selu", "leaky_relu"])
def test_calculate_gain_matches_torch(nonlinearity):
    torch = pytest.importorskip("torch")
    assert init.calculate_gain(nonlinearity) == pytest.approx(torch.nn.init.calculate_gain(nonlinearity))


def test_fans_use_the_in_out_layout():
    assert init.fans((3, 7)) == (3, 7)
    assert init.fans((3, 7, 2, 2)) == (12, 28)
    with pytest.raises(ValueError, match=r"at least 2 dimensions, got shape \(5,\)"):
        init.fans((5,))


def test_bad_nonlinearity_and_mode_are_named():
    with pytest.raises(ValueError, match="unknown nonlinearity 'swish'"):
        init.calculate_gain("swish")
    with pytest.raises(ValueError, match="mode must be 'fan_in' or 'fan_out', got 'fan_avg'"):
        init.kaiming_normal_(fresh(numpy, (3, 4)), mode="fan_avg")


def test_manual_seed_reproduces_initial_values():
    nn.manual_seed(11)
    first = [init.xavier_normal_(fresh(numpy, (8, 4))).data.copy(), nn.Linear(4, 3).weight.data.copy()]
    nn.manual_seed(11)
    second = [init.xavier_normal_(fresh(numpy, (8, 4))).data.copy(), nn.Linear(4, 3).weight.data.copy()]
    nn.manual_seed(12)
    other = init.xavier_normal_(fresh(numpy, (8, 4))).data
    for a, b in zip(first, second):
        numpy.testing.assert_array_equal(a, b)
    assert not numpy.array_equal(first[0], other)


def test_explicit_generator_reproduces_values_and_leaves_the_shared_one_alone():
    nn.manual_seed(3)
    expected_next_shared = nn.Linear(5, 2).weight.data.copy()

    nn.manual_seed(3)
    from_generator = [init.kaiming_uniform_(fresh(numpy, (6, 6)), generator=numpy.random.default_rng(9)).data.copy()
                      for _ in range(2)]
    layers = [nn.Linear(6, 6, generator=numpy.random.default_rng(9)) for _ in range(2)]
    numpy.testing.assert_array_equal(*from_generator)
    numpy.testing.assert_array_equal(layers[0].weight.data, layers[1].weight.data)
    numpy.testing.assert_array_equal(layers[0].bias.data, layers[1].bias.data)
    numpy.testing.assert_array_equal(nn.Linear(5, 2).weight.data, expected_next_shared)


def test_rng_state_round_trip_repeats_the_draws():
    nn.manual_seed(4)
    nn.Linear(3, 3)
    state = nn.rng.get_rng_state()
    expected = nn.Linear(3, 3).weight.data.copy()
    nn.manual_seed(99)
    nn.rng.set_rng_state(state)
    numpy.testing.assert_array_equal(nn.Linear(3, 3).weight.data, expected)


def test_manual_seed_rejects_negative_and_non_integer_seeds():
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        nn.manual_seed(-1)
    with pytest.raises(ValueError, match="got 1.5"):
        nn.manual_seed(1.5)
