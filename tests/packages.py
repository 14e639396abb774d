"""Skip a test when an optional package is missing, without importing it (some take seconds to import)."""
import importlib.util

import pytest


def require(name: str) -> None:
    """Call `pytest.skip` unless the top-level package `name` is installed."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed")
