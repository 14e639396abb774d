"""Atomic writing of a checkpoint file: a temporary beside it, unique to the writer, fsynced and renamed over it."""
from __future__ import annotations

import contextlib
import os
import re
import tempfile

import numpy

TEMPORARY_SUFFIX = ".tmp"
NEW_FILE_MODE = 0o666  # less the umask, as for any file the process creates


def write_atomically(path: str, arrays: dict[str, numpy.ndarray]) -> None:
    """Write `arrays` as an .npz archive to a temporary file beside `path`, fsync, give it the mode the umask
    allows, rename over `path`.

    The temporary's name holds this process's id and a random part (".ckpt.npz.1234.k3j9x2ab.tmp"),
    so writers of other paths in the folder, and of this path in other processes, never meet it;
    once the rename is done, this path's temporaries that killed writes left are removed.

    Raises:
        OSError: naming `path` (a full disk, a missing folder, no permission); the temporary
            file is removed and any previous checkpoint at `path` is left intact.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=TEMPORARY_SUFFIX,
                                                 dir=directory)
    except OSError as error:
        raise _write_error(path, error) from None
    try:
        with os.fdopen(descriptor, "wb") as stream:
            numpy.savez(stream, **arrays)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, NEW_FILE_MODE & ~_umask())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        if isinstance(error, OSError):
            raise _write_error(path, error) from None
        raise
    _remove_stray_temporaries(path)
    _fsync_directory(directory)


def _write_error(path: str, error: OSError) -> OSError:
    return OSError(error.errno, f"cannot write checkpoint {path}: {error.strerror or error}; free space or choose "
                                "another folder (any previous checkpoint there is intact)")


def _temporary_prefix(path: str, pid: int | None = None) -> str:
    """The start of a temporary name of `path` that process `pid` (this one by default) writes: ".ckpt.npz.1234."."""
    return f".{os.path.basename(path)}.{os.getpid() if pid is None else pid}."


def _remove_stray_temporaries(path: str) -> None:
    """Remove the temporary files of `path` (never of another file) that writes killed midway left beside it:
    this process's own, and those of processes no longer running on this machine."""
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(f".{os.path.basename(path)}.") + r"(\d+)\.[A-Za-z0-9_]+" +
                         re.escape(TEMPORARY_SUFFIX))
    for name in os.listdir(directory):
        match = pattern.fullmatch(name)
        if match and _stale(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(directory, name))


def _stale(pid: int) -> bool:
    """Whether a temporary file written by process `pid` can be in flight no more (a thread of this process
    writes one path at a time)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):
        return False
    return False


def _umask() -> int:
    """This process's umask, read without changing it where Linux tells it (changing it races other threads)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    current = os.umask(0o022)
    os.umask(current)
    return current


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable; not every platform can open a folder, which is fine."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
