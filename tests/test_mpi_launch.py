"""The test helper that launches MPI jobs tries again only a launch whose launcher never started."""
from __future__ import annotations

import subprocess
import sys

import mpi_launch

DID_NOT_START = f"-----\n{mpi_launch.LAUNCHER_DID_NOT_START}. We cannot\ncontinue.\n-----\n"


def launches(monkeypatch, outcomes):
    """Make run_whole_job return `outcomes` (returncode, stderr) in turn; returns the list of calls made."""
    calls = []

    def fake(command, timeout, *, env, cwd):
        returncode, stderr = outcomes[len(calls)]
        calls.append(command)
        return subprocess.CompletedProcess(command, returncode, "", stderr)

    monkeypatch.setattr(mpi_launch, "run_whole_job", fake)
    return calls


def test_a_launcher_that_did_not_start_is_tried_once_more(monkeypatch):
    calls = launches(monkeypatch, [(213, DID_NOT_START), (0, "")])
    assert mpi_launch.run_bounded(["mpiexec"], 5, env={}, cwd=".").returncode == 0
    assert len(calls) == 2


def test_only_once_more(monkeypatch):
    calls = launches(monkeypatch, [(213, DID_NOT_START), (213, DID_NOT_START), (0, "")])
    assert mpi_launch.run_bounded(["mpiexec"], 5, env={}, cwd=".").returncode == 213
    assert len(calls) == 2


def test_a_job_that_failed_is_not_run_again(monkeypatch):
    calls = launches(monkeypatch, [(1, "Traceback (most recent call last):\nValueError: x\n"), (0, "")])
    assert mpi_launch.run_bounded(["mpiexec"], 5, env={}, cwd=".").returncode == 1
    assert len(calls) == 1


def started(stderr: str, status: int) -> subprocess.Popen:
    """A stand-in launcher that prints `stderr` and ends with `status`, its stderr piped as the fault tests do."""
    program = f"import sys; sys.stderr.write({stderr!r}); sys.exit({status})"
    return subprocess.Popen([sys.executable, "-c", program], stderr=subprocess.PIPE)


def test_the_stderr_of_a_started_launcher_is_read_once_it_has_ended():
    assert mpi_launch.LAUNCHER_DID_NOT_START in mpi_launch.stderr_once_ended(started(DID_NOT_START, 213))
    assert "ValueError: x" in mpi_launch.stderr_once_ended(started("Traceback (most recent call last):\nValueError: x\n", 1))


def test_a_started_job_that_still_runs_has_no_stderr_yet():
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], stderr=subprocess.PIPE)
    try:
        assert mpi_launch.stderr_once_ended(running, wait_s=0.5) is None
    finally:
        running.kill()
        running.wait()
