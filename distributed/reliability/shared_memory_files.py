"""The files in /dev/shm that a job leaves behind when it cannot finish normally, and removing them."""
from __future__ import annotations

import os

SHARED_MEMORY_DIRECTORY = "/dev/shm"

_local_peer_pids: list[int] = []


def remember_local_peers(pids: list[int]) -> None:
    """The process ids of the ranks on this node, whose files `remove_job_files` also removes."""
    _local_peer_pids[:] = pids


def mapped_shared_memory_files(pid: int | str = "self") -> list[str]:
    """Files under /dev/shm that process `pid` has mapped and that still exist (empty without /proc)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            paths = {line.split(maxsplit=5)[5].strip() for line in maps if f" {SHARED_MEMORY_DIRECTORY}/" in line}
    except OSError:
        return []
    return sorted(path for path in paths if not path.endswith("(deleted)"))


def openmp_registration_file(pid: int) -> str:
    """The file Intel's OpenMP runtime registers process `pid` in."""
    return os.path.join(SHARED_MEMORY_DIRECTORY, f"__KMP_REGISTERED_LIB_{pid}_{os.getuid()}")


def remove_job_files() -> None:
    """Remove the /dev/shm files this process and its node's ranks have mapped, and their OpenMP registrations.

    MPICH keeps the segment its ranks share on a node in /dev/shm/mpich_shm_* (Open MPI one
    per rank, /dev/shm/sm_segment.*) until MPI_Finalize, and Intel's OpenMP runtime (under MKL) registers each process in
    /dev/shm/__KMP_REGISTERED_LIB_<pid>_<uid>; a job that is aborted or killed leaves both.
    For a process about to abort the job: the mappings themselves stay valid until each process
    ends, so ranks still running are not disturbed. Errors are ignored.
    """
    pids = sorted({os.getpid(), *_local_peer_pids})
    mapped = {path for pid in pids for path in mapped_shared_memory_files(pid)}
    for path in sorted(mapped) + [openmp_registration_file(pid) for pid in pids]:
        try:
            os.unlink(path)
        except OSError:
            pass
