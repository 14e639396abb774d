"""Real `mpiprop run` jobs on 2 ranks: arguments, threads and GPUs reach every rank; a raising rank ends the job."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mpi_launch import local_launcher, run_bounded
from mpiprop.launch.mpiexec import MPICH

pytestmark = pytest.mark.mpi  # every test here runs real multi-rank jobs

TIMEOUT_S = 120

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
