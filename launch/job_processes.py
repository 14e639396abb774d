"""Run a job in a way that can always be stopped whole: mpiexec, its proxies and every rank on this node.

Hydra (MPICH's mpiexec) starts each rank in a session of its own, so killing mpiexec's
process group leaves the ranks running. Each job therefore gets a marker in its
environment, which every rank inherits, and stopping the job kills every process that
carries it (found through Linux's /proc; elsewhere only the process group is killed).
SIGTERM, SIGHUP, SIGINT, SIGUSR1 or SIGUSR2 to the process that runs the job either stops the
job the same way, or (given a grace period) is passed on to the job, which may end by itself.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator

from mpiprop.launch.mpiexec import MPICH, OPENMPI

JOB_MARKER_VARIABLE = "MPIPROP_JOB"
GRACE_S = 5.0
DEFAULT_GRACE_S = 60.0  # for a signalled job to end by itself (`mpiprop run --grace`)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
# MPICH's mpiexec dies at once on SIGHUP and SIGUSR2, leaving its ranks behind; it forwards the others
FORWARDED_AS = {signal.SIGHUP: signal.SIGTERM, signal.SIGUSR2: signal.SIGTERM}
# Open MPI's mpirun ends the job on SIGTERM, SIGINT and SIGHUP (SIGTERM to every rank, SIGKILL soon after), and
# forwards SIGUSR1 and SIGUSR2 to every rank on every node; SIGUSR1 is what a preempted Trainer also checkpoints on
OPENMPI_PASSED_AS = {signal.SIGTERM: signal.SIGUSR1, signal.SIGINT: signal.SIGUSR1, signal.SIGHUP: signal.SIGUSR1}


class JobInterrupted(SystemExit):
    """This process got one of STOP_SIGNALS while it ran a job, and stopped it; exits with status 128 + signum."""

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
                  cwd: str | Path | None = None, capture: bool = True,
                  grace: float | None = None, flavour: str = MPICH) -> subprocess.CompletedProcess:
    """Run `command`; past `timeout` seconds, on a stop signal or on any exception, stop it whole.

    Stopping sends mpiexec SIGTERM (or the signal this process got; mpiexec forwards it to
    the ranks), waits up to GRACE_S seconds, then kills whatever of the job is left, ranks
    included. Once mpiexec has ended, any process of the job still running is killed too.

    Args:
        command: mpiexec and its arguments.
        timeout: seconds allowed, or None.
        env: the environment (default: this process's), to which the job's marker is added.
        cwd: the working directory.
        capture: return the output as text; otherwise the job shares this terminal (and stdin).
        grace: None: a stop signal stops the job as above. Seconds: the signal is passed on to
            the job (see `pass_signal`), which has that long to end by itself (a preempted
            training writes its checkpoint and exits with status 75); its status is returned
            as if no signal had come. Only past the grace is the job killed.
        flavour: the MPI that `command` launches (MPICH or OPENMPI), which tells how a signal
            is passed on (see `pass_signal`).

    Raises:
        subprocess.TimeoutExpired: past `timeout` seconds, with the output so far in `.stdout` and `.stderr`.
        JobInterrupted: on one of STOP_SIGNALS, once the job has been stopped (with `grace`: once
            the grace has passed and the job has been killed).
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
            if grace is None:
                stop_job(process, marker, FORWARDED_AS.get(interrupted.signum, interrupted.signum))
                _say(f"mpiprop: got {signal.Signals(interrupted.signum).name}; stopped the job "
                     f"(`{os.path.basename(command[0])}` ended with status {process.returncode})")
                raise
            stdout, stderr = wait_after_signal(process, marker, interrupted.signum, grace,
                                               shares_terminal=not capture, flavour=flavour)
        except BaseException:
            stop_job(process, marker)
            raise
        kill_job_processes(marker)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def wait_after_signal(process: subprocess.Popen, marker: str, signum: int, grace: float, *,
                      shares_terminal: bool, flavour: str = MPICH) -> tuple[str, str]:
    """Pass `signum` on to the job (see `pass_signal`) and wait up to `grace` seconds for it to end; past that, kill it.

    Returns:
        The rest of the job's output, once it has ended by itself.

    Raises:
        JobInterrupted: when the job was still running after `grace` seconds (it is killed first).
    """
    name = signal.Signals(signum).name
    pass_signal(process, marker, signum, from_terminal=shares_terminal and _from_this_terminal(signum),
                flavour=flavour)
    try:
        output = _rest_of_output(process.communicate(timeout=grace))
    except subprocess.TimeoutExpired:
        _say(f"mpiprop: got {name}; the job was still running {grace:g} s later (the grace period, --grace), "
             "so it was killed")
        kill_job_processes(marker)
        stop_job(process, marker, signal.SIGKILL)
        raise JobInterrupted(signum) from None
    _say(f"mpiprop: got {name}; passed it on to the job, which ended with status {exit_status(process.returncode)}")
    return output


def pass_signal(process: subprocess.Popen, marker: str, signum: int, *, from_terminal: bool = False,
                flavour: str = MPICH) -> None:
    """Give the job `signum`, as if each rank had got it.

    MPICH's mpiexec (and srun) forward SIGTERM, SIGINT and SIGUSR1 to every rank. SIGHUP
    becomes SIGTERM: MPICH's mpiexec dies of SIGHUP at once, MPICH's ranks ignore it, and
    SIGTERM is the signal a preempted Trainer checkpoints on. MPICH's mpiexec dies of SIGUSR2
    too, so SIGUSR2 goes straight to the ranks on this node (the processes of the job that run
    this Python); when none is found there, mpiexec gets SIGTERM instead.

    Open MPI's mpirun (`flavour` OPENMPI) takes SIGTERM, SIGINT and SIGHUP as an order to end
    the job: it sends every rank SIGTERM and kills it moments later, before any checkpoint is
    written. It forwards SIGUSR1 and SIGUSR2 to every rank on every node, so those go to
    mpirun as they came, and the other three go to it as SIGUSR1, on which a preempted
    Trainer checkpoints exactly as on SIGTERM (a program of the user's own sees SIGUSR1).
    Through mpirun the signal reaches the ranks on other nodes too, which signalling this
    node's ranks directly would miss.

    A SIGINT typed at the terminal the job shares (`from_terminal`) has reached mpiexec
    already: a second one would make it abort the job (Open MPI's mpirun aborts it on the first).
    """
    if from_terminal:
        return
    if flavour == OPENMPI:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(OPENMPI_PASSED_AS.get(signum, signum))
        return
    if signum == signal.SIGUSR2:
        ranks = job_ranks(marker)
        for pid in ranks:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        if ranks:
            return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(FORWARDED_AS.get(signum, signum))


def job_ranks(marker: str, python: str = sys.executable) -> list[int]:
    """The processes of the job `marker` on this node that run `python` (the ranks, not mpiexec or its proxies)."""
    ranks = []
    for pid in processes_with(JOB_MARKER_VARIABLE, marker):
        try:
            program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:
            continue
        if program == python:
            ranks.append(pid)
    return ranks


def exit_status(returncode: int) -> int:
    """A process's exit status as a shell reports it: 128 + N for one that died of signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _from_this_terminal(signum: int) -> bool:
    """Whether `signum` is a SIGINT that likely came from the terminal: this process is in its foreground group."""
    if signum != signal.SIGINT:
        return False
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:  # stdin is no terminal
        return False


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
