"""The test helper that launches MPI jobs tries again only a launch whose launcher never started."""
from __future__ import annotations

import subprocess

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
