"""Pipelines under real mpiexec at 2 and 4 stages, every schedule, and 2 stages x 2 replicas, against one process."""
import re

import pytest

from mpi_launch import run_mpi

pytestmark = pytest.mark.mpi  # every test here runs real multi-rank jobs

TIMEOUT_S = 300  # generous for an oversubscribed machine; a hang still fails
EVERY_SCHEDULE = "gpipe:4,1f1b:4,interleaved:4,zb-h1:4"


def ok_lines(stdout):
    """(rank, "schedule=..." or "errors") per PIPE-OK report; ranks' reports may share a line."""
    return re.findall(r"PIPE-OK rank=(\d+) (schedule=[\w-]+|errors|buffers)", stdout)


def test_two_stages_train_like_one_process_with_every_schedule_and_errors_reach_every_rank():
    result = run_mpi("pipe_equivalence.py", 2, "--specs", EVERY_SCHEDULE, "--errors", timeout=TIMEOUT_S)
    lines = ok_lines(result.stdout)
    assert sorted(lines) == sorted((str(rank), what) for rank in range(2)
                                   for what in ("schedule=gpipe", "schedule=1f1b", "schedule=interleaved",
                                                "schedule=zb-h1", "errors")), result.stdout


def test_four_stages_and_a_two_by_two_grid_train_like_one_process():
    specs = EVERY_SCHEDULE + ",1f1b:2,zb-h1:3"  # also fewer micro-batches than stages
    result = run_mpi("pipe_equivalence.py", 4, "--specs", specs, "--grid-specs", "1f1b:4,zb-h1:2",
                     timeout=TIMEOUT_S)
    lines = ok_lines(result.stdout)
    assert len(lines) == 4 * 9, result.stdout  # 8 trainings and the grid's shared buffers, on 4 ranks
    assert sorted(rank for rank, what in lines if what == "buffers") == ["0", "1", "2", "3"], result.stdout
    assert result.stdout.count("grid=2x2") == 4 * 2, result.stdout  # ranks' lines may interleave
