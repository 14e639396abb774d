"""Where each rank sits on its node (from MPI, not from stale launcher variables), and its BLAS threads.

Real `mpiexec` jobs print threadpoolctl's view of each rank after `mpiprop.distributed.start()`;
the expectations come from this machine's cores, counted here.
"""
from __future__ import annotations

import json
import os
import re

import pytest

from mpi_launch import run_mpi
from mpiprop.distributed.transport.blas_threads import (oversubscription_warning, set_blas_threads, threads_per_rank,
                                                        user_thread_setting)
from mpiprop.distributed.transport.world import NodePlacement

pytestmark = pytest.mark.mpi
NO_THREAD_SETTING = {"OMP_NUM_THREADS": None, "OPENBLAS_NUM_THREADS": None, "MKL_NUM_THREADS": None}
CORES = len(os.sched_getaffinity(0))


def reports(stdout: str) -> dict[int, dict]:
    """The JSON report of each rank, by rank (two ranks' lines may run together in the launcher's output)."""
    found = [json.loads(text) for text in re.findall(r"\{[^{}]*\}", stdout)]
    return {report["rank"]: report for report in found}


@pytest.mark.parametrize("node, expected", [
    (NodePlacement(local_rank=0, local_size=2, node_cores=16, rank_cores=16), 8),
    (NodePlacement(local_rank=1, local_size=3, node_cores=16, rank_cores=16), 5),
    (NodePlacement(local_rank=0, local_size=2, node_cores=16, rank_cores=1), 1),  # Open MPI binds ranks to cores
    (NodePlacement(local_rank=3, local_size=4, node_cores=2, rank_cores=2), 1)])
def test_threads_are_the_node_cores_divided_by_its_ranks(node, expected):
    assert threads_per_rank(node) == expected


def test_oversubscription_warning_names_the_counts_and_the_fix():
    assert oversubscription_warning(NodePlacement(0, 2, 2, 2)) is None
    assert oversubscription_warning(NodePlacement(0, 4, 2, 2)) == (
        "4 ranks share 2 cores on this node, so they take turns and each runs slower than it would alone; start at "
        "most 2 ranks per node (e.g. `mpiexec -n 2`), or spread them over more nodes with a hostfile")


def test_a_thread_count_the_user_set_is_left_alone():
    environ = {"MKL_NUM_THREADS": "3"}
    assert user_thread_setting(environ) == "MKL_NUM_THREADS=3"
    assert set_blas_threads(NodePlacement(0, 2, 16, 16), environ) is None
    assert environ == {"MKL_NUM_THREADS": "3"}
    assert user_thread_setting({"OMP_NUM_THREADS": " "}) is None


def test_each_of_two_ranks_gets_its_share_of_the_cores():
    result = run_mpi("placement_report.py", 2, env=NO_THREAD_SETTING)
    by_rank = reports(result.stdout)
    assert sorted(by_rank) == [0, 1], result.stdout + result.stderr
    expected = max(1, CORES // 2)
    for rank, report in by_rank.items():
        assert report["local_rank"] == rank and report["local_size"] == 2
        assert report["node_cores"] == CORES
        assert report["blas_threads"] and all(1 <= threads <= expected for threads in report["blas_threads"]), report
        assert report["OMP_NUM_THREADS"] == str(max(report["blas_threads"]))
    assert "warning" not in result.stderr, result.stderr


def test_the_users_thread_count_stands():
    result = run_mpi("placement_report.py", 2, env={**NO_THREAD_SETTING, "OMP_NUM_THREADS": "2"})
    for report in reports(result.stdout).values():
        assert report["OMP_NUM_THREADS"] == "2", report
        assert report["blas_threads"] == [min(2, report["rank_cores"])], report  # a BLAS uses no more than it may


@pytest.mark.skipif(CORES >= 4, reason="needs fewer than 4 cores to oversubscribe them with 4 ranks")
def test_more_ranks_than_cores_warns_once_per_node():
    result = run_mpi("placement_report.py", 4, env=NO_THREAD_SETTING)
    assert sorted(reports(result.stdout)) == [0, 1, 2, 3]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("mpiprop: warning:")]
    assert warnings == [f"mpiprop: warning: 4 ranks share {CORES} cores on this node, so they take turns and each "
                        f"runs slower than it would alone; start at most {CORES} ranks per node (e.g. "
                        f"`mpiexec -n {CORES}`), or spread them over more nodes with a hostfile"], result.stderr
    assert all(report["blas_threads"] == [1] for report in reports(result.stdout).values())


def test_local_ranks_that_collide_are_named_and_overruled():
    result = run_mpi("placement_report.py", 2, "--set", "MPI_LOCALRANKID=0", "--set", "PMI_RANK={rank}")
    assert [reports(result.stdout)[rank]["local_rank"] for rank in (0, 1)] == [0, 1]
    warnings = [line for line in result.stderr.splitlines() if "MPI_LOCALRANKID" in line]
    assert warnings == ["mpiprop: warning: MPI_LOCALRANKID (from MPICH's Hydra (also Intel MPI)) gives the 2 ranks "
                        "on this node the local ranks [0, 0], not each its own of 0 to 1, so they would share GPUs; "
                        "numbering them in MPI's order instead. Was MPI_LOCALRANKID inherited from an outer launcher or a batch script? Start "
                        "the ranks with that launcher, or unset the variable"], result.stderr


def test_a_launcher_numbering_the_node_in_another_order_is_no_mistake():
    result = run_mpi("placement_report.py", 2, "--set", "MPI_LOCALRANKID={swapped}", "--set", "PMI_RANK={rank}")
    assert [reports(result.stdout)[rank]["local_rank"] for rank in (0, 1)] == [0, 1]
    assert "warning" not in result.stderr, result.stderr


def test_variables_of_a_slurm_batch_script_do_not_move_the_ranks():
    batch_step = {"SLURM_JOB_ID": "42", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NTASKS": "1"}
    result = run_mpi("placement_report.py", 2, env=batch_step)
    assert [reports(result.stdout)[rank]["local_rank"] for rank in (0, 1)] == [0, 1]
    assert "warning" not in result.stderr, result.stderr
