"""The installed distribution's version: `mpiprop.network.__version__`, re-exported by distributed and launch."""
from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "mpiprop"
UNKNOWN_VERSION = "0+unknown"  # a source tree imported without being installed has no metadata to read


def installed_version(distribution: str = DISTRIBUTION) -> str:
    """The version pip installed `distribution` at (pyproject.toml's `version`), or UNKNOWN_VERSION without one."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return UNKNOWN_VERSION


__version__ = installed_version()
