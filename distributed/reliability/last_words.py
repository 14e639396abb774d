"""Say why a process ends, on file descriptor 2, whether or not anyone still reads it."""
from __future__ import annotations

import fcntl
import os
import struct
import sys
import termios
import threading
import time

STDERR_DESCRIPTOR = 2


def write_last_words(text: str) -> None:
    """Write `text` (a newline added when missing; nothing when empty) straight to descriptor 2, ignoring errors.

    A guard that ends a process must not depend on its output: when the launcher is gone,
    the pipe behind stderr is broken (EPIPE), closed or full, and `sys.stderr` may have been
    replaced or closed by the program. Python's own buffered streams are flushed first, each
    failure ignored, so earlier output keeps its order where it still can.
    """
    flush_python_streams()
    if not text:
        return
    data = (text if text.endswith("\n") else text + "\n").encode(errors="replace")
    try:
        while data:
            data = data[os.write(STDERR_DESCRIPTOR, data):]
    except OSError:
        return
    wait_until_read(STDERR_DESCRIPTOR)


def wait_until_read(descriptor: int, within_s: float = 1.0) -> None:
    """Give the reader of a pipe (mpiexec's proxy) up to `within_s` seconds to take what was written to it.

    A rank that aborts the job right after writing would otherwise race the proxy, which
    the abort tears down, and the line could be lost. Returns at once for anything that
    is not a pipe with unread bytes.
    """
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            unread = struct.unpack("i", fcntl.ioctl(descriptor, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:
            return
        if unread == 0:
            return
        time.sleep(0.01)


def flush_python_streams() -> None:
    """Flush sys.stdout and sys.stderr, ignoring a stream that is closed, broken or missing."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream must not stop a process from ending
            pass


def exit_with_last_words(text: str, exit_code: int, write_within_s: float = 2.0) -> None:
    """Write `text` as `write_last_words` does, then end this process at once with `exit_code`.

    A write that blocks (a full pipe nobody reads) is given `write_within_s` seconds; the
    process ends with `exit_code` either way. Never returns.
    """
    exit_after(write_within_s, exit_code)
    write_last_words(text)
    os._exit(exit_code)


def exit_after(seconds: float, exit_code: int) -> None:
    """End this process with `exit_code` in `seconds`, from a daemon thread, whatever the others do meanwhile."""
    def end() -> None:
        time.sleep(seconds)
        os._exit(exit_code)

    threading.Thread(target=end, name="mpiprop-exit-backstop", daemon=True).start()
