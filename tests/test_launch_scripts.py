"""examples/launch/: the Slurm, PBS and mpirun scripts run their job on this machine, 2 ranks on the local host.

Each script runs under bash with the scheduler's variables set here as the scheduler would set them;
every rank writes a timeline file (MPIPROP_TRACE), so the files show how many ranks ran.
"""
from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

from mpi_launch import REPOSITORY_ROOT, mpi_env, run_bounded
from mpiprop.distributed.reliability.timeline import rank_file
from mpiprop.launch.mpiexec import find_mpiexec

pytestmark = pytest.mark.mpi
SCRIPTS = REPOSITORY_ROOT / "examples" / "launch"
TRAINING = ["--epochs", "2", "--quiet"]
TIMEOUT_S = 180
# Open MPI refuses root unless told; a person running these scripts as root sets these as well
OPEN_MPI_AS_ROOT = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def script_path(*first: Path) -> str:
    """PATH for a script: `first`, then the mpiexec the tests use (so its mpirun matches the MPI that mpi4py
    loads, also where a system MPI's mpirun sits in /usr/bin) and this Python, then the system's folders."""
    folders = [*first, Path(find_mpiexec()).parent, Path(sys.executable).parent, "/usr/bin", "/bin"]
    return os.pathsep.join(str(folder) for folder in folders)


def run_script(name: str, tmp_path: Path, variables: dict[str, str], *arguments: str, path: str | None = None):
    """`bash examples/launch/NAME arguments...` with `variables` set; returns the ranks that wrote a timeline."""
    trace = tmp_path / "trace.json"
    environment = mpi_env({**OPEN_MPI_AS_ROOT, **variables, "MPIPROP_TRACE": str(trace)})
    environment["PATH"] = path or script_path()
    completed = run_bounded(["bash", str(SCRIPTS / name), *arguments, *TRAINING], TIMEOUT_S, env=environment,
                            cwd=tmp_path)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "test_accuracy=" in completed.stdout, completed.stdout + completed.stderr
    return [rank for rank in range(4) if Path(rank_file(str(trace), rank)).exists()]


def slurm_allocation(tasks: int) -> dict[str, str]:
    """What sbatch sets for a batch script of `tasks` tasks on this host."""
    host = socket.gethostname()
    return {"SLURM_JOB_ID": "42", "SLURM_NTASKS": str(tasks), "SLURM_SUBMIT_DIR": str(REPOSITORY_ROOT),
            "SLURM_JOB_NODELIST": host, "SLURM_NODELIST": host, "SLURM_TASKS_PER_NODE": str(tasks),
            "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}


@pytest.mark.skipif(shutil.which("srun", path="/usr/bin:/bin") is not None, reason="srun is installed here")
def test_slurm_script_starts_the_ranks_with_mpirun_where_there_is_no_srun(tmp_path):
    assert run_script("slurm_job.sh", tmp_path, slurm_allocation(2)) == [0, 1]


def test_slurm_script_starts_the_ranks_with_srun(tmp_path):
    """A stand-in srun that logs its arguments and starts the tasks with mpirun, as srun would on one node."""
    bin_directory = tmp_path / "bin"
    bin_directory.mkdir()
    (bin_directory / "srun").write_text('#!/bin/sh\necho "$@" > "$SRUN_LOG"\nshift\nexec mpirun -n 2 "$@"\n')
    (bin_directory / "srun").chmod(0o755)
    path = script_path(bin_directory)
    log = tmp_path / "srun.log"
    ranks = run_script("slurm_job.sh", tmp_path, {**slurm_allocation(2), "SRUN_LOG": str(log)}, path=path)
    assert ranks == [0, 1]
    assert log.read_text().split() == ["--ntasks=2", "python", "examples/train_digits.py", *TRAINING]


def test_pbs_script_runs_a_rank_per_line_of_the_node_file(tmp_path):
    node_file = tmp_path / "nodes"
    node_file.write_text("localhost\nlocalhost\n")
    variables = {"PBS_NODEFILE": str(node_file), "PBS_O_WORKDIR": str(REPOSITORY_ROOT), "PBS_JOBID": "7.server"}
    assert run_script("pbs_job.sh", tmp_path, variables) == [0, 1]


def test_mpirun_script_runs_a_rank_per_host_line_of_a_hostfile(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two ranks on this machine\nlocalhost\n\nlocalhost\n")
    assert run_script("mpirun_job.sh", tmp_path, {}, str(hostfile)) == [0, 1]


def test_mpirun_script_runs_a_rank_per_gpu_of_one_node(tmp_path):
    """GPUS=2 as on a node with two GPUs; `--device cpu` after the script's `--device cuda` lets it run here."""
    assert run_script("mpirun_job.sh", tmp_path, {"GPUS": "2"}, "--device", "cpu") == [0, 1]
