"""Preparing arrays for training: a seeded train/validation split and per-feature standardisation."""
from __future__ import annotations

import numbers
from typing import Any

import numpy

from mpiprop.network.checks import all_finite


def train_val_split(x: numpy.ndarray, y: numpy.ndarray, val_fraction: float = 0.2, *,
                    seed: int = 0) -> tuple[tuple[numpy.ndarray, numpy.ndarray], tuple[numpy.ndarray, numpy.ndarray]]:
    """Split samples at random into ((x_train, y_train), (x_val, y_val)).

    Args:
        x, y: arrays with the same number of rows.
        val_fraction: share of samples for validation, in (0, 1); rounded to whole samples.
        seed: seed of the permutation, so the split is reproducible.

    Raises:
        TypeError: for a val_fraction that is not a number.
        ValueError: for a fraction outside (0, 1), a scalar x or y, mismatched rows, a seed that is not
            a non-negative integer, or a split leaving a part empty.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real):
        raise TypeError(f"val_fraction must be a number in (0, 1), got {val_fraction!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if isinstance(seed, bool) or not isinstance(seed, (int, numpy.integer)) or seed < 0:
        raise ValueError(f"train_val_split seed must be a non-negative integer, got {seed!r}")
    x, y = _samples(x, "x"), _samples(y, "y")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} rows but y has {len(y)}; they must match")
    num_val = int(round(len(x) * val_fraction))
    if num_val == 0 or num_val == len(x):
        raise ValueError(f"val_fraction {val_fraction} of {len(x)} samples leaves an empty part; change it")
    order = numpy.random.default_rng(seed).permutation(len(x))
    val, train = order[:num_val], order[num_val:]
    return (x[train], y[train]), (x[val], y[val])


def _samples(array: Any, name: str) -> Any:
    """`array` itself when it is an array (numpy or cupy), else as a numpy array; never a scalar."""
    samples = array
    if not hasattr(samples, "ndim"):
        try:
            samples = numpy.asarray(array)
        except ValueError as error:  # ragged nested lists
            raise ValueError(f"{name} cannot become a numpy array ({error}); give rows of equal length") from None
    if samples.ndim == 0:
        raise ValueError(f"{name} must be an array with a first (sample) axis, got the scalar {array!r}")
    return samples


class Standardizer:
    """Per-feature (x - mean) / std, with the statistics of the training data only.

    Features with zero spread get std 1, so they map to 0 instead of NaN.
    """

    def __init__(self) -> None:
        self.mean: numpy.ndarray | None = None
        self.std: numpy.ndarray | None = None

    def fit(self, x: numpy.ndarray) -> "Standardizer":
        """Learn mean and std per feature (axis 0) from `x`; returns self.

        Raises:
            ValueError: when `x` is not numeric, has no rows, or holds NaN or Inf.
        """
        x = numpy.asarray(x, dtype=numpy.float64)
        if x.ndim == 0 or len(x) == 0:
            raise ValueError(f"Standardizer.fit needs at least one sample (row), got an array of shape {x.shape}")
        all_finite(x, "Standardizer.fit input", fix="remove or fill those values before fitting")
        self.mean = x.mean(axis=0)
        std = x.std(axis=0)
        self.std = numpy.where(std > 0, std, 1.0)
        return self

    def transform(self, x: numpy.ndarray) -> numpy.ndarray:
        """Standardise `x` with the fitted statistics, keeping its dtype.

        Raises:
            TypeError: when `x` is not numeric.
            ValueError: when `x` has other features than the fitted data.
        """
        x = self._fitting(x)
        return ((x - self.mean) / self.std).astype(x.dtype, copy=False)

    def fit_transform(self, x: numpy.ndarray) -> numpy.ndarray:
        """`fit(x)` then `transform(x)`."""
        return self.fit(x).transform(x)

    def inverse_transform(self, x: numpy.ndarray) -> numpy.ndarray:
        """Undo `transform`."""
        x = self._fitting(x)
        return (x * self.std + self.mean).astype(x.dtype, copy=False)

    def state_dict(self) -> dict[str, numpy.ndarray]:
        """The statistics, to save beside a model (e.g. as checkpoint meta)."""
        self._check_fitted()
        return {"mean": self.mean.copy(), "std": self.std.copy()}

    def load_state_dict(self, state: dict[str, numpy.ndarray]) -> None:
        """Restore statistics from `state_dict`.

        Raises:
            ValueError: when `state` lacks "mean" or "std", or their shapes differ.
        """
        if not hasattr(state, "keys") or not {"mean", "std"} <= set(state.keys()):
            held = list(state.keys()) if hasattr(state, "keys") else type(state).__name__
            raise ValueError(f"a Standardizer state needs 'mean' and 'std', got {held}; "
                             "pass what state_dict() returned")
        mean, std = numpy.asarray(state["mean"], dtype=numpy.float64), numpy.asarray(state["std"], dtype=numpy.float64)
        if mean.shape != std.shape:
            raise ValueError(f"Standardizer state has mean of shape {mean.shape} but std of shape {std.shape}; "
                             "they must match")
        self.mean, self.std = mean, std

    def _fitting(self, x: Any) -> numpy.ndarray:
        """`x` as a numpy array whose features match the fitted statistics."""
        self._check_fitted()
        x = numpy.asarray(x)
        if x.dtype.kind not in "biufc":
            raise TypeError(f"Standardizer needs numeric x, got an array of dtype {x.dtype}")
        if x.shape[1:] != self.mean.shape:
            raise ValueError(f"Standardizer was fitted on features of shape {self.mean.shape} but x has shape "
                             f"{x.shape}; give rows of {self.mean.shape} features")
        return x

    def _check_fitted(self) -> None:
        if self.mean is None:
            raise RuntimeError("Standardizer is not fitted; call fit(x_train) first")
