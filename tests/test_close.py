"""close() and `with` release what DataParallel, Pipeline, tensor-parallel groups and Communicators hold."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.distributed import Communicator, DataParallel, Pipeline, tensor_parallel_group

ROOT = Path(__file__).resolve().parents[1]


def model() -> nn.Sequential:
    nn.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def one_step(strategy) -> None:
    strategy.train_step(numpy.ones((3, 4), dtype=numpy.float32), numpy.zeros((3, 2), dtype=numpy.float32),
                        nn.MSELoss())


@pytest.mark.parametrize("build", [lambda: DataParallel(model()), lambda: Pipeline(model(), micro_batches=2)],
                         ids=["DataParallel", "Pipeline"])
def test_a_closed_strategy_keeps_its_gradients_and_refuses_collectives(build):
    with build() as strategy:
        one_step(strategy)
        gradients = [p.grad.copy() for p in strategy.parameters()]
    assert strategy.closed
    strategy.close()  # again: nothing happens
    for p, gradient in zip(strategy.parameters(), gradients):
        numpy.testing.assert_array_equal(p.grad, gradient)
    with pytest.raises(RuntimeError, match="closed"):
        one_step(strategy)


def test_leaving_a_with_block_by_an_exception_leaves_the_strategy_open():
    """The other ranks may not be leaving the block: a collective free could hang, so the exception goes first."""
    with pytest.raises(ZeroDivisionError):
        with DataParallel(model()) as dp:
            1 / 0
    assert not dp.closed
    dp.close()


def test_a_communicator_frees_what_was_made_through_it():
    with Communicator() as comm:
        node, clone, window = comm.split_by_node(), comm.clone(), comm.allocate_shared(64)
        clone.free()
    assert comm.closed and node.closed and clone.closed and window.freed
    with pytest.raises(RuntimeError, match="closed"):
        comm.barrier()
    with pytest.raises(RuntimeError, match="freed"):
        window.sync()


def test_a_tensor_parallel_group_outlives_the_clone_it_was_split_from():
    with tensor_parallel_group(1) as group:
        assert group.allreduce(numpy.ones(2)).tolist() == [1.0, 1.0]
    assert group.closed


@pytest.mark.mpi
def test_500_builds_and_closes_on_2_ranks_hold_memory_shared_memory_and_communicators_flat(monkeypatch):
    """The benchmark's own targets on fewer cycles (it runs 10,000)."""
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("examples.benchmarks.bench_close_cycles")
    result = bench.main(["--cycles", "500", "--every", "100", "--timeout", "600"])
    assert [f["cycle"] for f in result["figures"]] == list(range(0, 501, 100))
    assert result["verdicts"] == {"rss": True, "shm": True, "communicators": True}, result["figures"]
