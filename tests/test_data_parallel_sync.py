"""What DataParallel keeps alike across ranks under real mpiexec: buffers for evaluation, gradients of uneven shards."""
import re

import pytest

from mpi_launch import run_mpi

TIMEOUT_S = 300


@pytest.mark.parametrize("ranks", [2, 4])
def test_every_rank_evaluates_with_rank_0s_batchnorm_statistics(ranks):
    result = run_mpi("dp_batchnorm_eval.py", ranks, timeout=TIMEOUT_S)
    checks = re.findall(r"BN-OK rank=(\d) (\w+)", result.stdout)
    assert sorted(checks) == sorted((str(rank), what) for rank in range(ranks) for what in ("data_parallel", "grid"))
