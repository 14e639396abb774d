"""Synthetic, seeded data sets for benchmarks and tests: Gaussian class blobs and noisy linear regression."""
from __future__ import annotations

import numpy

from mpiprop.network.checks import positive_int


def synthetic_classification(num_samples: int, num_features: int, num_classes: int, *, seed: int = 0,
                             separation: float = 3.0, dtype=numpy.float32) -> tuple[numpy.ndarray, numpy.ndarray]:
    """Samples around one random centre per class (unit Gaussian noise; centres N(0, separation²)).

    Returns:
        x of shape (num_samples, num_features) and int64 labels y in [0, num_classes), classes in equal shares.
    """
    num_samples = positive_int(num_samples, "num_samples")
    num_features = positive_int(num_features, "num_features")
    num_classes = positive_int(num_classes, "num_classes")
    generator = numpy.random.default_rng(seed)
    centres = generator.normal(0.0, separation, size=(num_classes, num_features))
    y = generator.permutation(numpy.arange(num_samples) % num_classes).astype(numpy.int64)
    x = centres[y] + generator.normal(size=(num_samples, num_features))
    return x.astype(dtype), y


def synthetic_regression(num_samples: int, num_features: int, num_outputs: int = 1, *, seed: int = 0,
                         noise: float = 0.1, dtype=numpy.float32) -> tuple[numpy.ndarray, numpy.ndarray]:
    """y = x @ w + noise, with x and w standard normal.

    Returns:
        x of shape (num_samples, num_features) and y of shape (num_samples, num_outputs).
    """
    num_samples = positive_int(num_samples, "num_samples")
    num_features = positive_int(num_features, "num_features")
    num_outputs = positive_int(num_outputs, "num_outputs")
    generator = numpy.random.default_rng(seed)
    x = generator.normal(size=(num_samples, num_features))
    weights = generator.normal(size=(num_features, num_outputs))
    y = x @ weights + noise * generator.normal(size=(num_samples, num_outputs))
    return x.astype(dtype), y.astype(dtype)
