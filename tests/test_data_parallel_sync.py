"""What DataParallel keeps alike across ranks under real mpiexec: buffers for evaluation, gradients of uneven shards."""
import re

import pytest

from mpi_launch import run_mpi

TIMEOUT_S = 300


@pytest.mark.parametrize("ranks", [2, 4])
def test_every_rank_evaluates_with_rank_0s_batchnorm_statistics(ranks):
    result = run_mpi("dp_batchnorm_eval.py", ranks, timeout=TIMEOUT_S)
    checks = re.findall(r"BN-OK rank=(\d) (data_parallel|grid)", result.stdout)  # ranks' lines may interleave
    assert sorted(checks) == sorted((str(rank), what) for rank in range(ranks) for what in ("data_parallel", "grid"))


def test_uneven_shards_on_three_ranks_give_the_global_batch_gradient_with_and_without_accumulation():
    result = run_mpi("dp_uneven_shards.py", 3, timeout=TIMEOUT_S)
    checks = re.findall(r"UNEVEN-OK rank=(\d) (rows=\d|no_sync)", result.stdout)
    assert sorted(checks) == sorted([("0", "rows=4"), ("1", "rows=3"), ("2", "rows=3")]
                                    + [(str(rank), "no_sync") for rank in range(3)]), result.stdout
