"""Stopping a job whole: mpiexec starts each rank in a session of its own, so stopping must find them all."""
import os
import signal
import subprocess
import sys
import time

import pytest

from launch.job_processes import (JOB_MARKER_VARIABLE, kill_job_processes, new_job_marker, processes_with,
                                  run_whole_job, stop_job)
from mpi_launch import MPI_SCRIPTS, REPOSITORY_ROOT, mpi_env, mpiexec_path


def test_stopping_a_job_kills_ranks_that_lost_their_proxy_and_ignore_sigterm():
    """The stray this guards against: a rank whose hydra proxy died, so mpiexec's end no longer reaches it."""
    marker = new_job_marker()
    command = [mpiexec_path(), "-n", "2", sys.executable, str(MPI_SCRIPTS / "stubborn_ranks.py")]
    job = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=mpi_env({JOB_MARKER_VARIABLE: marker}), cwd=REPOSITORY_ROOT,
                           start_new_session=True)
    try:
        _read_until_both_ranks_started(job)
        job_processes = {pid: _command(pid) for pid in processes_with(JOB_MARKER_VARIABLE, marker)}
        ranks = [pid for pid, command in job_processes.items() if command.startswith(sys.executable)]
        proxies = [pid for pid, command in job_processes.items() if "hydra_pmi_proxy" in command]
        assert len(ranks) == 2 and len(proxies) == 1, job_processes
        os.kill(proxies[0], signal.SIGKILL)
        stopping = time.monotonic()
        stop_job(job, marker)
        assert time.monotonic() - stopping < 30
        assert [pid for pid in ranks if _is_alive(pid)] == []
    finally:
        kill_job_processes(marker)


def test_a_job_past_its_timeout_is_stopped_with_its_output_so_far():
    probe = new_job_marker()
    command = ["sh", "-c", "echo before-the-hang; sleep 300 & sleep 300"]
    with pytest.raises(subprocess.TimeoutExpired) as expired:
        run_whole_job(command, timeout=2, env=mpi_env({"TEST_PROBE": probe}))
    assert expired.value.stdout == "before-the-hang\n"
    assert processes_with("TEST_PROBE", probe) == []  # the shell and its background sleep alike


def _command(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def _is_alive(pid):
    """True while `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _read_until_both_ranks_started(job):
    """Read the job's output until both ranks said so (their lines may arrive merged into one)."""
    output = ""
    while not ("started 0" in output and "started 1" in output):
        line = job.stdout.readline()
        assert line, f"the job ended before both ranks started: {output!r} {job.stderr.read()}"
        output += line
