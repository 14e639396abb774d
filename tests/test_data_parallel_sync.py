"""What DataParallel keeps alike across ranks under real mpiexec: buffers for evaluation, gradients of uneven shards."""
import re

import pytest

from mpi_launch import run_mpi
from mpiprop.distributed.data_parallel.node_groups import PRETEND_NODES_VARIABLE, pretend_nodes

TIMEOUT_S = 300


@pytest.mark.parametrize("ranks", [2, 4])
def test_every_rank_evaluates_with_rank_0s_batchnorm_statistics(ranks):
    result = run_mpi("dp_batchnorm_eval.py", ranks, timeout=TIMEOUT_S)
    checks = re.findall(r"BN-OK rank=(\d) (data_parallel|grid)", result.stdout)  # ranks' lines may interleave
    assert sorted(checks) == sorted((str(rank), what) for rank in range(ranks) for what in ("data_parallel", "grid"))


def test_uneven_shards_on_three_ranks_give_the_global_batch_gradient_with_and_without_accumulation():
    """Also when some ranks' shard sizes change between steps."""
    result = run_mpi("dp_uneven_shards.py", 3, timeout=TIMEOUT_S)
    checks = re.findall(r"UNEVEN-OK rank=(\d) (rows=\d|no_sync|changing sizes (?:over shared memory|over mpi))", result.stdout)
    changing = [(str(rank), f"changing sizes {kind}") for rank in range(3)
                for kind in ("over shared memory", "over mpi")]
    assert sorted(checks) == sorted([("0", "rows=4"), ("1", "rows=3"), ("2", "rows=3")]
                                    + [(str(rank), "no_sync") for rank in range(3)] + changing), result.stdout


def test_four_ranks_as_two_pretend_nodes_sum_within_each_node_then_between_leaders():
    result = run_mpi("hierarchical_allreduce.py", 4, timeout=TIMEOUT_S, env={PRETEND_NODES_VARIABLE: "2"})
    assert sorted(re.findall(r"rank (\d) ok", result.stdout)) == ["0", "1", "2", "3"], result.stdout


def test_data_parallel_over_pretend_nodes_trains_like_one_process():
    result = run_mpi("dp_equivalence.py", 4, timeout=TIMEOUT_S, env={PRETEND_NODES_VARIABLE: "2"})
    assert "allreduce=hierarchical" in result.stdout, result.stdout
    assert sorted(re.findall(r"rank (\d) ok", result.stdout)) == ["0", "1", "2", "3"], result.stdout


def test_pretend_nodes_must_divide_the_ranks(monkeypatch):
    monkeypatch.setenv(PRETEND_NODES_VARIABLE, "3")
    with pytest.raises(ValueError, match="MPIPROP_PRETEND_NODES='3' must be a positive integer dividing the 1 ranks"):
        pretend_nodes()
    monkeypatch.setenv(PRETEND_NODES_VARIABLE, "1")
    assert pretend_nodes() == 1


@pytest.mark.parametrize("ranks", [2, 4])
def test_data_parallel_with_dropout_equals_one_process_on_the_global_batch(ranks):
    result = run_mpi("dp_dropout.py", ranks, timeout=TIMEOUT_S)
    assert sorted(re.findall(r"DROPOUT-OK rank=(\d)", result.stdout)) == [str(rank) for rank in range(ranks)]
