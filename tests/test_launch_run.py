"""Real `mpiprop run` jobs on 2 ranks: arguments, threads and GPUs reach every rank; a raising rank ends the job;
a signal to the launcher reaches every rank, which may end in its own time and with its own status."""
from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mpi_launch import (MPI_SCRIPTS, REPOSITORY_ROOT, local_launcher, mpi_env, run_bounded, start_until_ready,
                        stop_probed)
from mpiprop.launch.job_processes import new_job_marker, processes_with
from mpiprop.launch.mpiexec import MPICH, OPENMPI

pytestmark = pytest.mark.mpi  # every test here runs real multi-rank jobs

TIMEOUT_S = 300  # a hang guard: starting Python and MPI on 2 ranks of a loaded machine can take a minute

REPORT_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    with open(f"report_{rank}.json", "w") as report:  # a file per rank: printed lines of two ranks can interleave
        json.dump({"rank": rank, "size": MPI.COMM_WORLD.Get_size(), "argv": sys.argv,
                   "threads": os.environ.get("OMP_NUM_THREADS"), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "name": __name__, "passed": os.environ.get("MPIPROP_PASSED")}, report)
""")

RAISING_SCRIPT = textwrap.dedent("""
    import time
    from mpi4py import MPI
    if MPI.COMM_WORLD.Get_rank() == 1:
        raise RuntimeError("rank one failed on purpose")
    MPI.COMM_WORLD.Barrier()  # rank 0 would wait here forever without the abort handler
    time.sleep(60)
""")


def run_mpiprop(*arguments: str, cwd: str, timeout: float = TIMEOUT_S,
                extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m mpiprop.launch arguments...` in its own process group, killed whole (mpiexec, ranks) on timeout."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", **(extra or {})}
    environment.pop("CUDA_VISIBLE_DEVICES", None)
    command = [sys.executable, "-m", "mpiprop.launch", *arguments]
    return run_bounded(command, timeout, env=environment, cwd=cwd)


def test_run_two_ranks_passes_arguments_threads_and_gpus(tmp_path):
    (tmp_path / "report.py").write_text(REPORT_SCRIPT)
    completed = run_mpiprop("run", "-n", "2", "--threads-per-rank", "1", "--gpus-per-node", "2",
                        "report.py", "--epochs", "3", cwd=str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    reports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("report_*.json"))]
    by_rank = {report["rank"]: report for report in reports}
    assert sorted(by_rank) == [0, 1]
    for rank, report in by_rank.items():
        assert report["size"] == 2
        assert report["argv"] == ["report.py", "--epochs", "3"]
        assert report["name"] == "__main__"
        assert report["threads"] == "1"
        assert report["gpu"] == str(rank)  # one node: the local rank is the rank


def test_exception_on_one_rank_ends_the_job_with_its_traceback(tmp_path):
    (tmp_path / "raising.py").write_text(RAISING_SCRIPT)
    completed = run_mpiprop("run", "-n", "2", "--threads-per-rank", "1", "raising.py", cwd=str(tmp_path))
    assert completed.returncode != 0
    assert "rank 1" in completed.stderr
    assert "RuntimeError: rank one failed on purpose" in completed.stderr


def test_launcher_arguments_reach_the_launcher(tmp_path):
    """A variable set only by a launcher flag given with --mpi-arg (each flavour has its own flag for it)."""
    (tmp_path / "report.py").write_text(REPORT_SCRIPT)
    set_variable = "-genv MPIPROP_PASSED yes" if local_launcher().flavour == MPICH else "-x MPIPROP_PASSED=yes"
    completed = run_mpiprop("run", "-n", "2", "--mpi-arg", set_variable, "report.py", cwd=str(tmp_path))
    assert completed.returncode == 0, completed.stderr
    reports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("report_*.json"))]
    assert [report["passed"] for report in reports] == ["yes", "yes"]


def test_variables_inherited_from_a_batch_script_do_not_move_the_gpus(tmp_path):
    """mpiexec started inside a Slurm batch script (no srun here): every rank inherits SLURM_LOCALID=0."""
    (tmp_path / "report.py").write_text(REPORT_SCRIPT)
    batch_step = {"SLURM_JOB_ID": "42", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1"}
    completed = run_mpiprop("run", "-n", "2", "--launcher", "mpiexec", "--gpus-per-node", "2", "report.py",
                            cwd=str(tmp_path), extra=batch_step)
    assert completed.returncode == 0, completed.stderr
    reports = [json.loads(path.read_text()) for path in sorted(tmp_path.glob("report_*.json"))]
    assert [(report["rank"], report["gpu"]) for report in reports] == [(0, "0"), (1, "1")]


# --- signals to the launcher are passed on; the job ends in its own time (a preemption checkpoint) ------------------
GRACEFUL_EXIT = MPI_SCRIPTS / "graceful_exit.py"  # each rank sleeps 4 s after the signal, then exits with status 75
STARTS_WITHIN_S = 180  # starting Python and MPI on a loaded machine
ENDS_WITHIN_S = 180  # the 4 s the ranks take, with room for a loaded machine


def start_graceful_job(*run_options: str):
    """`mpiprop run -n 2 RUN_OPTIONS graceful_exit.py`, its output piped as a launcher's is; returns once every
    rank is ready, with the probe that every process of the job carries."""
    def start():
        probe = new_job_marker()
        return subprocess.Popen([sys.executable, "-m", "mpiprop.launch", "run", "-n", "2", *run_options,
                                 str(GRACEFUL_EXIT)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=mpi_env({"TEST_PROBE": probe}), cwd=REPOSITORY_ROOT,
                                start_new_session=True), probe

    def not_ready(started):
        process, output, deadline = started[0], "", time.monotonic() + STARTS_WITHIN_S
        while output.count("READY") < 2:
            ready, _, _ = select.select([process.stdout], [], [], max(deadline - time.monotonic(), 0))
            chunk = os.read(process.stdout.fileno(), 65536).decode() if ready else ""
            if not chunk:
                return f"the job ended or stalled before both ranks were ready (status {process.poll()}): {output}"
            output += chunk

    return start_until_ready(start, not_ready, lambda started: stop_probed(*started))


@contextlib.contextmanager
def nothing_left(process, probe):
    try:
        yield
    finally:
        stop_probed(process, probe)


def signal_the_ranks_get(signum: int, flavour: str) -> str:
    """MPICH's ranks ignore SIGHUP, so it comes as SIGTERM, on which a Trainer checkpoints. Open MPI's mpirun ends
    the job on SIGTERM, SIGINT and SIGHUP, and forwards only SIGUSR1 and SIGUSR2: those three come as SIGUSR1,
    on which a Trainer checkpoints too."""
    if flavour == OPENMPI and signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        return "SIGUSR1"
    return "SIGTERM" if signum == signal.SIGHUP else signal.Signals(signum).name


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2],
                         ids=lambda signum: signal.Signals(signum).name)
def test_a_signal_to_mpiprop_run_reaches_every_rank_which_ends_in_its_own_time_with_its_own_status(signum):
    process, probe = start_graceful_job()
    with nothing_left(process, probe):
        os.kill(process.pid, signum)
        signalled = time.monotonic()
        _, stderr = process.communicate(timeout=ENDS_WITHIN_S)
        took = time.monotonic() - signalled
        left = processes_with("TEST_PROBE", probe)
    name = signal.Signals(signum).name
    received = signal_the_ranks_get(signum, local_launcher().flavour)
    assert left == [], f"processes of the job left after mpiprop ended: {left}\n{stderr.decode()}"
    stderr = stderr.decode()
    assert process.returncode == 75, stderr
    for rank in (0, 1):  # every rank got the signal itself, and took its 4 s to "checkpoint"
        assert f"rank {rank}: got {received}" in stderr and f"rank {rank}: saved" in stderr, stderr
    assert f"mpiprop: got {name}; passed it on to the job, which ended with status 75" in stderr, stderr
    assert took >= 4, took
    print(f"JOB-ENDED {name} to mpiprop run: {took:.1f} s")


def test_a_job_still_running_after_the_grace_period_is_killed_and_mpiprop_says_so():
    process, probe = start_graceful_job("--grace", "1")
    with nothing_left(process, probe):
        os.kill(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=ENDS_WITHIN_S)
        left = processes_with("TEST_PROBE", probe)
    stderr = stderr.decode()
    assert left == [], f"processes of the job left after mpiprop ended: {left}\n{stderr}"
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "still running 1 s later (the grace period, --grace), so it was killed" in stderr, stderr
    assert "saved" not in stderr, stderr  # killed within its 4 s
