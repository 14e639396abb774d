"""Shared fixtures: the array modules (numpy, and cupy where a GPU is present) that tests run on."""
from __future__ import annotations

import numpy
import pytest

from network import backend


def _array_module_params() -> list:
    cupy_mark = pytest.mark.skipif(
        not backend.cupy_available(),
        reason="cupy is not installed or sees no GPU; the cupy variant of this test needs both",
    )
    return [pytest.param("numpy", id="numpy"), pytest.param("cupy", id="cupy", marks=cupy_mark)]


@pytest.fixture(params=_array_module_params())
def xp(request):
    """The array module under test: numpy, or cupy where `network.backend.cupy_available()`."""
    return numpy if request.param == "numpy" else backend.module_for_device("cuda")


@pytest.fixture
def device(xp) -> str:
    """The device name ("cpu" or "cuda") that matches `xp`."""
    return "cpu" if xp is numpy else "cuda"
