"""Stopping a job whole: mpiexec starts each rank in a session of its own, so stopping must find them all."""
import os
import signal
import subprocess
import sys
import time

import pytest

from mpiprop.launch.job_processes import (JOB_MARKER_VARIABLE, kill_job_processes, new_job_marker, processes_with,
                                  run_whole_job, stop_job)
from mpi_launch import local_launcher, mpi_env, start_mpi_job
from mpiprop.launch.mpiexec import MPICH
from processes import command_line, is_running

pytestmark = pytest.mark.mpi  # every test here runs real multi-rank jobs


def test_stopping_a_job_kills_ranks_that_lost_their_proxy_and_ignore_sigterm():
    """The stray this guards against: a rank whose hydra proxy died, so mpiexec's end no longer reaches it."""
    if local_launcher().flavour != MPICH:
        pytest.skip("Hydra's per-node proxy is what this kills; Open MPI's launcher starts the ranks itself")
    job, marker = start_mpi_job("stubborn_ranks.py", 2, stdout=subprocess.PIPE)
    try:
        _read_until_both_ranks_started(job)
        job_processes = {pid: command_line(pid) for pid in processes_with(JOB_MARKER_VARIABLE, marker)}
        ranks = [pid for pid, command in job_processes.items() if command.startswith(sys.executable)]
        proxies = [pid for pid, command in job_processes.items() if "hydra_pmi_proxy" in command]
        assert len(ranks) == 2 and len(proxies) == 1, job_processes
        os.kill(proxies[0], signal.SIGKILL)
        stopping = time.monotonic()
        stop_job(job, marker)
        assert time.monotonic() - stopping < 30
        assert [pid for pid in ranks if is_running(pid)] == []
    finally:
        kill_job_processes(marker)


def test_a_job_past_its_timeout_is_stopped_with_its_output_so_far():
    probe = new_job_marker()
    command = ["sh", "-c", "echo before-the-hang; sleep 300 & sleep 300"]
    with pytest.raises(subprocess.TimeoutExpired) as expired:
        run_whole_job(command, timeout=2, env=mpi_env({"TEST_PROBE": probe}))
    assert expired.value.stdout == "before-the-hang\n"
    assert processes_with("TEST_PROBE", probe) == []  # the shell and its background sleep alike


def _read_until_both_ranks_started(job):
    """Read the job's output until both ranks said so (their lines may arrive merged into one)."""
    output = ""
    while not ("started 0" in output and "started 1" in output):
        line = job.stdout.readline()
        assert line, f"the job ended before both ranks started: {output!r} {job.stderr.read()}"
        output += line


def test_a_process_of_the_job_left_after_it_ended_is_killed():
    probe = new_job_marker()
    result = run_whole_job(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo left"], timeout=30,
                           env=mpi_env({"TEST_PROBE": probe}))
    assert result.stdout == "left\n"
    assert processes_with("TEST_PROBE", probe) == []
