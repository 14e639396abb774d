"""Run a script under a real `mpiexec -n N`, with a timeout so a hang fails the test instead of blocking.

Usage in a test module (tests/ is on sys.path under pytest)::

    from mpi_launch import run_mpi
    result = run_mpi("dp_equivalence.py", 2, "--steps", "3")   # a name in tests/mpi_scripts/ or a path
    assert "ok" in result.stdout
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from mpiprop.launch.job_processes import (JOB_MARKER_VARIABLE, kill_processes, new_job_marker, processes_with,
                                          run_whole_job)
from mpiprop.launch.mpiexec import MPIEXEC
from mpiprop.launch.runner import Launcher

MPI_SCRIPTS = Path(__file__).parent / "mpi_scripts"
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TIMEOUT_S = 120
# what an MPI library prints from its C sources when something in it failed, e.g. Open MPI's
# "[host:123] .../osc_ucx_component.c:375  Error: OSC UCX component priority set inside component query failed"
MPI_LIBRARY_ERROR = re.compile(r"\.c:\d+\b.*\berror\b", re.IGNORECASE)
ONE_THREAD_PER_RANK = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Open MPI's launcher now and then fails to start its PMIx server and ends before starting any rank
LAUNCHER_DID_NOT_START = "The PMIx server's listener thread failed to start"


@functools.cache
def local_launcher() -> Launcher:
    """This machine's mpiexec (beside the running Python, else on PATH), its flavour, cores and user.

    Calls `pytest.skip` when there is none, since multi-rank tests cannot run without it.
    """
    try:
        return Launcher.detect(MPIEXEC)
    except FileNotFoundError as missing:
        pytest.skip(f"no mpiexec to run multi-rank tests with: {missing}")


def mpiexec_command(ranks: int, *program: str) -> list[str]:
    """`mpiexec -n ranks program...` with the flags the installed MPI needs here, as `mpiprop run` builds them
    (under Open MPI: `--oversubscribe` beyond this machine's cores, `--allow-run-as-root` as root)."""
    return local_launcher().prefix(ranks) + [*program]


def mpi_env(extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment for ranks: one BLAS thread each, unbuffered output, the repository importable,
    and `extra` (where a value of None removes the variable)."""
    env = dict(os.environ, **ONE_THREAD_PER_RANK, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), env.get("PYTHONPATH", "")]))
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def run_mpi(script: str | Path, ranks: int, *args: str, timeout: float = DEFAULT_TIMEOUT_S,
            check: bool = True, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    """Run `mpiexec -n ranks python script args...` and return the finished process.

    Args:
        script: a file name inside tests/mpi_scripts/, or any path.
        ranks: number of MPI processes (oversubscription is fine).
        args: command-line arguments for the script.
        timeout: seconds before the whole process group is killed and the test fails.
        check: fail the test when the exit status is not 0, or when a rank's MPI library printed an error
            (pass False to inspect failures).
        env: extra environment variables (None removes one).

    Returns:
        The CompletedProcess with text `stdout` and `stderr`.
    """
    path = Path(script) if Path(script).is_absolute() else MPI_SCRIPTS / script
    command = mpiexec_command(ranks, sys.executable, str(path), *map(str, args))
    result = run_bounded(command, timeout, env=mpi_env(env), cwd=REPOSITORY_ROOT)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited with {result.returncode}\n"
                    f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}")
    library_errors = [line for line in result.stderr.splitlines() if MPI_LIBRARY_ERROR.search(line)]
    if check and library_errors:
        pytest.fail(f"{' '.join(command)} succeeded, but its MPI library printed errors:\n" + "\n".join(library_errors))
    return result


def start_mpi_job(script: str | Path, ranks: int, *args: str,
                  stdout=subprocess.DEVNULL) -> tuple[subprocess.Popen, str]:
    """Start `mpiexec -n ranks python script args...` without waiting; stderr is piped.

    Returns:
        The mpiexec process and the job marker that `mpiprop.launch.job_processes.stop_job` needs to stop all of it.
    """
    path = Path(script) if Path(script).is_absolute() else MPI_SCRIPTS / script
    command = mpiexec_command(ranks, sys.executable, str(path), *map(str, args))
    marker = new_job_marker()
    job = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.PIPE, text=True,
                           env=mpi_env({JOB_MARKER_VARIABLE: marker}), cwd=REPOSITORY_ROOT, start_new_session=True)
    return job, marker


def stderr_once_ended(job: subprocess.Popen, wait_s: float = 10) -> str | None:
    """All that `job`, started with stderr piped, wrote to stderr, once it has ended (waiting up to `wait_s`
    seconds for that); None while it still runs. `LAUNCHER_DID_NOT_START` in it means that no rank ran, so
    starting the job again is safe."""
    try:
        job.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        return None
    stderr = job.stderr.read()
    return stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr


def start_until_ready(start: Callable[[], tuple], not_ready: Callable[[tuple], str | None],
                      stop: Callable[[tuple], None], wait_s: float = 10) -> tuple:
    """What `start()` gives (the launcher's Popen, stderr piped, first), once `not_ready` of it gives None.

    `not_ready` waits for the job to be ready and otherwise says why not (it ended, or was not ready in
    time). A launcher that could not start (`LAUNCHER_DID_NOT_START`, seen within `wait_s` seconds) is
    then started once more; any other job is stopped with `stop` and fails the test with the reason and
    its stderr.
    """
    for attempt in (1, 2):
        started = start()
        reason = not_ready(started)
        if reason is None:
            return started
        stderr = stderr_once_ended(started[0], wait_s)
        if attempt == 1 and LAUNCHER_DID_NOT_START in (stderr or ""):
            continue
        stop(started)
        pytest.fail(f"{reason}\n--- stderr ---\n{stderr if stderr is not None else stderr_once_ended(started[0])}")


def stop_probed(process: subprocess.Popen, probe: str) -> None:
    """Kill every process whose environment has TEST_PROBE=`probe`, and the process group of `process`."""
    kill_processes(processes_with("TEST_PROBE", probe))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def run_bounded(command: list[str], timeout: float, *, env: dict[str, str], cwd: str | Path) -> subprocess.CompletedProcess:
    """Run `command`; past `timeout` seconds stop the whole job (mpiexec and every rank) and fail the test.

    A launch whose launcher could not start (`LAUNCHER_DID_NOT_START` in its output: no rank ran) is
    tried once more.
    """
    for attempt in (1, 2):
        try:
            result = run_whole_job(command, timeout, env=env, cwd=cwd)
        except subprocess.TimeoutExpired as expired:
            pytest.fail(f"{' '.join(command)} did not finish within {timeout} s (a hang?)\n"
                        f"--- stdout ---\n{expired.stdout}\n--- stderr ---\n{expired.stderr}")
        if attempt == 2 or result.returncode == 0 or LAUNCHER_DID_NOT_START not in result.stderr:
            return result
