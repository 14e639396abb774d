"""Tensor-parallel Linear layers: real mpiexec runs against one process (also as DataParallel replicas),
and single-rank units."""
import re

import numpy
import pytest
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import Communicator
from mpiprop.distributed.tensor_parallel import (
    ColumnParallelLinear, RowParallelLinear, full_state_dict, load_full_state_dict, tensor_parallel_group,
)
from mpi_launch import run_mpi


@pytest.mark.mpi
@pytest.mark.parametrize("ranks, size", [(2, 2), (4, 4), (4, 2)])
def test_training_gradients_and_checkpoints_equal_one_process(ranks, size):
    output = run_mpi("tp_equivalence.py", ranks, str(size)).stdout
    for recompute in (False, True):
        match = re.search(rf"ranks={ranks} T={size} recompute={recompute} max_abs_diff=(\S+)", output)
        assert match and float(match.group(1)) <= 1e-6, output
    if ranks > size:
        match = re.search(rf"ranks={ranks} T={size} replicas={ranks // size} max_abs_diff=(\S+)", output)
        assert match and float(match.group(1)) <= 1e-6, output
    assert f"T={size} finite differences" in output and f"T={size} checkpoint round trip ok" in output
    assert sorted(re.findall(r"rank (\d+) ok", output)) == [str(rank) for rank in range(ranks)]


@pytest.fixture(scope="module")
def alone() -> Communicator:
    return tensor_parallel_group(1, Communicator(MPI.COMM_SELF))


def whole(seed: int = 0) -> nn.Sequential:
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


def test_a_group_of_one_rank_is_the_whole_model(alone):
    plain = whole()
    split = nn.Sequential(ColumnParallelLinear(plain[0], alone), plain[1], RowParallelLinear(plain[2], alone))
    x = numpy.random.default_rng(0).standard_normal((5, 4)).astype(numpy.float32)
    numpy.testing.assert_array_equal(split.forward(x)[0], plain.forward(x)[0])
    assert [name for name, _ in split.named_parameters()] == [name for name, _ in plain.named_parameters()]


def test_layers_copy_their_share_and_leave_the_whole_linear_alone(alone):
    plain = whole()
    column = ColumnParallelLinear(plain[0], alone)
    column.weight.data[...] = 0.0
    assert plain[0].weight.data.any()
    assert "rank 0 of 1" in repr(column)


def test_full_state_dict_loads_back_and_checks_shapes(alone):
    plain, other = whole(1), whole(2)
    split = nn.Sequential(ColumnParallelLinear(other[0], alone), other[1], RowParallelLinear(other[2], alone))
    load_full_state_dict(split, plain.state_dict())
    for name, value in full_state_dict(split).items():
        numpy.testing.assert_array_equal(value, plain.state_dict()[name], err_msg=name)
    wrong = dict(plain.state_dict(), **{"2.weight": numpy.zeros((3, 6), dtype=numpy.float32)})
    with pytest.raises(ValueError, match=r"whole weight of shape \(6, 3\), got \(3, 6\)"):
        load_full_state_dict(split, wrong)


def test_wrong_arguments_are_named(alone):
    with pytest.raises(TypeError, match="built from a network Linear, got ReLU"):
        ColumnParallelLinear(nn.ReLU(), alone)
    with pytest.raises(TypeError, match="tensor_parallel_group"):
        RowParallelLinear(nn.Linear(2, 2), MPI.COMM_SELF)
    with pytest.raises(ValueError, match="does not divide the 1 ranks"):
        tensor_parallel_group(2, MPI.COMM_SELF)
    column = ColumnParallelLinear(nn.Linear(4, 2), alone)
    with pytest.raises(TypeError, match="float32 weights on cpu but got a float64 input"):
        column.forward(numpy.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 4\) but got \(2, 3\)"):
        column.forward(numpy.zeros((2, 3), dtype=numpy.float32))
