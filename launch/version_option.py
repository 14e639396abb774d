"""`mpiprop --version`: the installed version, looked up only when asked for."""
from __future__ import annotations

import argparse
from typing import Sequence


class VersionAction(argparse.Action):
    """`--version`: print `mpiprop X.Y.Z` and exit (the version is looked up only when asked for)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from mpiprop.launch import __version__

        print(f"mpiprop {__version__}")
        parser.exit(0)
