"""The test helpers that launch MPI jobs try again only a launch whose launcher never started."""
from __future__ import annotations

import subprocess
import sys

import pytest

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


def starts(outcomes):
    """A `start` for start_until_ready giving stand-in launchers (stderr, status) in turn, and the list of those given."""
    given = []

    def start():
        given.append((started(*outcomes[len(given)]),))
        return given[-1]
    return start, given


def ended_at_once(started_launcher):
    started_launcher[0].wait()
    return f"ended with status {started_launcher[0].returncode}"


def test_a_job_is_started_once_more_only_when_its_launcher_could_not_start():
    start, given = starts([(DID_NOT_START, 213), ("", 0)])
    stopped = []
    assert mpi_launch.start_until_ready(start, lambda job: None if len(given) == 2 else ended_at_once(job),
                                        stopped.append) is given[1]
    assert stopped == []


def test_a_job_that_is_not_ready_for_another_reason_is_stopped_and_fails_with_its_stderr():
    start, given = starts([("Traceback (most recent call last):\nValueError: x\n", 1), ("", 0)])
    stopped = []
    with pytest.raises(pytest.fail.Exception, match=r"(?s)ended with status 1.*ValueError: x"):
        mpi_launch.start_until_ready(start, ended_at_once, stopped.append)
    assert stopped == given and len(given) == 1


def test_a_launcher_that_could_not_start_twice_fails():
    start, given = starts([(DID_NOT_START, 213), (DID_NOT_START, 213), ("", 0)])
    with pytest.raises(pytest.fail.Exception, match="ended with status 213"):
        mpi_launch.start_until_ready(start, ended_at_once, lambda job: None)
    assert len(given) == 2


def test_a_job_still_running_when_not_ready_is_stopped_and_fails_with_its_stderr():
    program = "import sys, time; sys.stderr.write('still starting'); sys.stderr.flush(); time.sleep(60)"
    running = subprocess.Popen([sys.executable, "-c", program], stderr=subprocess.PIPE)
    with pytest.raises(pytest.fail.Exception, match="(?s)not ready in time.*still starting"):
        mpi_launch.start_until_ready(lambda: (running,), lambda job: "not ready in time",
                                     lambda job: job[0].kill(), wait_s=0.5)
