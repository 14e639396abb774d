"""Run a job in a way that can always be stopped whole: mpiexec, its proxies and every rank on this node.

Hydra (MPICH's mpiexec) starts each rank in a session of its own, so killing mpiexec's
process group leaves the ranks running. Each job therefore gets a marker in its
environment, which every rank inherits, and stopping the job kills every process that
carries it (found through Linux's /proc; elsewhere only the process group is killed).
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

JOB_MARKER_VARIABLE = "MPIPROP_JOB"
GRACE_S = 5.0


def new_job_marker() -> str:
    """A value for JOB_MARKER_VARIABLE that no other job has."""
    return uuid.uuid4().hex


def processes_with(variable: str, value: str) -> list[int]:
    """Process ids (other than this one) whose environment holds `variable=value`; empty without /proc."""
    wanted = f"{variable}={value}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            environment = (entry / "environ").read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if wanted in environment and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def kill_processes(pids: list[int]) -> None:
    """SIGKILL each of `pids`, ignoring those already gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def kill_job_processes(marker: str, wait_s: float = GRACE_S) -> None:
    """SIGKILL every process whose environment holds `marker`, and wait up to `wait_s` seconds for them to end."""
    deadline = time.monotonic() + wait_s
    while (left := processes_with(JOB_MARKER_VARIABLE, marker)) and time.monotonic() < deadline:
        kill_processes(left)
        time.sleep(0.05)


def run_whole_job(command: list[str], timeout: float | None, *, env: dict[str, str] | None = None,
                  cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run `command` with its output captured; past `timeout` seconds, or on any exception, stop it whole.

    Stopping sends mpiexec SIGTERM (it forwards it to the ranks), waits up to GRACE_S
    seconds, then kills whatever of the job is left, ranks included.

    Raises:
        subprocess.TimeoutExpired: past `timeout` seconds, with the output so far in `.stdout` and `.stderr`.
    """
    marker = new_job_marker()
    environment = dict(os.environ if env is None else env, **{JOB_MARKER_VARIABLE: marker})
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=environment, cwd=cwd, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        expired.stdout, expired.stderr = stop_job(process, marker)
        raise
    except BaseException:
        stop_job(process, marker)
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def stop_job(process: subprocess.Popen, marker: str) -> tuple[str, str]:
    """Stop the job started as `process` with `marker`; returns the rest of its output."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    kill_job_processes(marker)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        return process.communicate(timeout=GRACE_S)
    except subprocess.TimeoutExpired:  # a rank on another node, or outside /proc's reach, still holds the pipes
        process.kill()
        return "", f"(the output of `{process.args[0]}` was cut off: part of the job could not be stopped)"
