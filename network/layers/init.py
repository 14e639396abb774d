"""Weight initialisation: Xavier/Glorot and He/Kaiming, uniform and normal, reproducible from a seed."""
from __future__ import annotations

import math

import numpy

from mpiprop.network.backend import device_of, to_device
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.compute import rng as _rng

_GAINS = {"linear": 1.0, "sigmoid": 1.0, "tanh": 5.0 / 3.0, "relu": math.sqrt(2.0), "selu": 0.75}


def calculate_gain(nonlinearity: str, negative_slope: float = 0.01) -> float:
    """The recommended gain for a nonlinearity, as in PyTorch's `calculate_gain`."""
    if nonlinearity == "leaky_relu":
        return math.sqrt(2.0 / (1 + negative_slope**2))
    if nonlinearity not in _GAINS:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; choose one of {sorted(_GAINS) + ['leaky_relu']}")
    return _GAINS[nonlinearity]


def fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of shape (in, out), as `Linear` stores it."""
    if len(shape) < 2:
        raise ValueError(f"fan in and fan out need a weight with at least 2 dimensions, got shape {shape}")
    receptive = math.prod(shape[2:])
    return shape[0] * receptive, shape[1] * receptive


def uniform_(param: Parameter, low: float, high: float, generator=None) -> Parameter:
    """Fill `param.data` with U(low, high) drawn on the CPU generator; returns param."""
    values = _generator(generator).uniform(low, high, size=param.shape)
    return _assign(param, values)


def normal_(param: Parameter, mean: float = 0.0, std: float = 1.0, generator=None) -> Parameter:
    """Fill `param.data` with N(mean, std²); returns param."""
    values = _generator(generator).normal(mean, std, size=param.shape)
    return _assign(param, values)


def constant_(param: Parameter, value: float) -> Parameter:
    """Fill `param.data` with `value`; returns param."""
    param.data.fill(value)
    return param


def zeros_(param: Parameter) -> Parameter:
    return constant_(param, 0.0)


def xavier_uniform_(param: Parameter, gain: float = 1.0, generator=None) -> Parameter:
    """Glorot & Bengio (2010): U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(param.shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(param, -bound, bound, generator)


def xavier_normal_(param: Parameter, gain: float = 1.0, generator=None) -> Parameter:
    """Glorot & Bengio (2010): N(0, std²) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(param.shape)
    return normal_(param, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)), generator)


def kaiming_uniform_(param: Parameter, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", generator=None) -> Parameter:
    """He et al. (2015): U(-b, b) with b = gain * sqrt(3 / fan)."""
    bound = _kaiming_std(param, a, mode, nonlinearity) * math.sqrt(3.0)
    return uniform_(param, -bound, bound, generator)


def kaiming_normal_(param: Parameter, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", generator=None) -> Parameter:
    """He et al. (2015): N(0, std²) with std = gain / sqrt(fan)."""
    return normal_(param, 0.0, _kaiming_std(param, a, mode, nonlinearity), generator)


def _kaiming_std(param: Parameter, a: float, mode: str, nonlinearity: str) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = fans(param.shape)
    fan = fan_in if mode == "fan_in" else fan_out
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def _generator(generator):
    return generator if generator is not None else _rng.generator(numpy)


def _assign(param: Parameter, values: numpy.ndarray) -> Parameter:
    values = values.astype(param.dtype, copy=False)
    param.data[...] = to_device(values, device_of(param.data))
    return param
