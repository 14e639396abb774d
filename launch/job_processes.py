"""Run a job in a way that can always be stopped whole: mpiexec, its proxies and every rank on this node.

Hydra (MPICH's mpiexec) starts each rank in a session of its own, so killing mpiexec's
process group leaves the ranks running. Each job therefore gets a marker in its
environment, which every rank inherits, and stopping the job kills every process that
carries it (found through Linux's /proc; elsewhere only the process group is killed).
SIGTERM, SIGHUP or SIGINT to the process that runs the job stops the job the same way.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

JOB_MARKER_VARIABLE = "MPIPROP_JOB"
GRACE_S = 5.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
FORWARDED_AS = {signal.SIGHUP: signal.SIGTERM}  # mpiexec dies at once on SIGHUP, leaving its ranks behind


class JobInterrupted(SystemExit):
    """This process got `signum` (SIGTERM, SIGHUP, SIGINT) while it ran a job; exits with status 128 + signum."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


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
                  cwd: str | Path | None = None, capture: bool = True) -> subprocess.CompletedProcess:
    """Run `command`; past `timeout` seconds, on a stop signal or on any exception, stop it whole.

    Stopping sends mpiexec SIGTERM (or the SIGINT this process got; mpiexec forwards it to
    the ranks), waits up to GRACE_S seconds, then kills whatever of the job is left, ranks
    included. Once mpiexec has ended, any process of the job still running is killed too.

    Args:
        command: mpiexec and its arguments.
        timeout: seconds allowed, or None.
        env: the environment (default: this process's), to which the job's marker is added.
        cwd: the working directory.
        capture: return the output as text; otherwise the job shares this terminal (and stdin).

    Raises:
        subprocess.TimeoutExpired: past `timeout` seconds, with the output so far in `.stdout` and `.stderr`.
        JobInterrupted: on SIGTERM, SIGHUP or SIGINT, once the job has been stopped.
    """
    marker = new_job_marker()
    environment = dict(os.environ if env is None else env, **{JOB_MARKER_VARIABLE: marker})
    piped = subprocess.PIPE if capture else None
    with stop_signals_raised():
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL if capture else None, stdout=piped,
                                   stderr=piped, text=True, env=environment, cwd=cwd, start_new_session=capture)
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired as expired:
            expired.stdout, expired.stderr = stop_job(process, marker)
            raise
        except JobInterrupted as interrupted:
            stop_job(process, marker, FORWARDED_AS.get(interrupted.signum, interrupted.signum))
            _say(f"mpiprop: got {signal.Signals(interrupted.signum).name}; stopped the job "
                 f"(`{os.path.basename(command[0])}` ended with status {process.returncode})")
            raise
        except BaseException:
            stop_job(process, marker)
            raise
        kill_job_processes(marker)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@contextlib.contextmanager
def stop_signals_raised() -> Iterator[None]:
    """Within the block, the first of STOP_SIGNALS raises JobInterrupted and later ones are ignored.

    Outside the main thread, where Python allows no signal handler, nothing changes.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        for each in STOP_SIGNALS:
            signal.signal(each, signal.SIG_IGN)  # stopping the job must not be interrupted in turn
        raise JobInterrupted(signum)

    previous = {each: signal.signal(each, interrupt) for each in STOP_SIGNALS}
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)


def stop_job(process: subprocess.Popen, marker: str, first_signal: int = signal.SIGTERM) -> tuple[str, str]:
    """Stop the job started as `process` with `marker`: `first_signal` to mpiexec, then SIGKILL to all of it.

    Returns:
        The rest of its output ("" for output that was not captured).
    """
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(first_signal)
    try:
        return _rest_of_output(process.communicate(timeout=GRACE_S))
    except subprocess.TimeoutExpired:
        pass
    finally:
        kill_job_processes(marker)
    with contextlib.suppress(ProcessLookupError):  # no such group when the job shares this terminal's
        os.killpg(process.pid, signal.SIGKILL)
    try:
        return _rest_of_output(process.communicate(timeout=GRACE_S))
    except subprocess.TimeoutExpired:  # a rank on another node, or outside /proc's reach, still holds the pipes
        process.kill()
        return "", f"(the output of `{process.args[0]}` was cut off: part of the job could not be stopped)"


def _rest_of_output(output: tuple[str | None, str | None]) -> tuple[str, str]:
    return output[0] or "", output[1] or ""


def _say(line: str) -> None:
    """Write `line` to descriptor 2, ignoring a terminal or pipe that is gone (after SIGHUP, say)."""
    with contextlib.suppress(OSError):
        os.write(2, (line + "\n").encode(errors="replace"))
