"""launch: the `mpiprop` command line (run, info, scale, model, trace) and what it runs on each rank."""
from __future__ import annotations


def __getattr__(name: str) -> str:
    """`mpiprop.launch.__version__`, read on first use (mpiprop.network, which holds it, is slow to import)."""
    if name == "__version__":
        from mpiprop.network.version import __version__

        return __version__
    raise AttributeError(f"module 'mpiprop.launch' has no attribute {name!r}")
