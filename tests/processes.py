"""Looking at processes through Linux's /proc, for tests that start, kill and stop jobs."""
from __future__ import annotations

from pathlib import Path


def command_line(pid: int) -> str:
    """The command line of `pid`, arguments separated by spaces; "" when it is gone."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
