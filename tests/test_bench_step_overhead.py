"""The step-overhead benchmark runs its four loops on tiny sizes under real mpiexec; no timing is asserted,
but the hand-written loop must train the same model as mpiprop's, so the comparison is of the same math."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("examples.benchmarks.bench_step_overhead")


@pytest.mark.mpi
def test_reports_every_loop_and_the_overheads(bench, capsys):
    summary = bench.main(["--steps", "3", "--blocks", "2", "--rounds", "1"])
    for loop in bench.LOOPS:
        assert summary[f"{loop}_us"] >= summary[f"{loop}_fastest_us"] > 0
    assert summary["rounds"] == 1 and summary["ranks"] == 2
    for key in ("data_parallel_overhead", "data_parallel_overhead_fastest", "hand_allreduce"):
        low, high = summary[f"{key}_range_us"]
        assert low == high == summary[f"{key}_us"]
    out = capsys.readouterr().out
    assert "data-parallel overhead (DataParallel - local)" in out and "one Allreduce by hand" in out


@pytest.mark.mpi
def test_any_mlp_widths_run(bench, capsys):
    summary = bench.main(["--widths", "8-6-5-3", "--batch", "4", "--steps", "2", "--blocks", "1", "--rounds", "1"])
    assert summary["widths"] == [8, 6, 5, 3] and summary["data_parallel_of_local"] > 0
    assert capsys.readouterr().out.startswith("round 1/1")


def test_widths_must_be_positive_integers_joined_by_dashes(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--widths", "784"])


def test_the_hand_written_step_trains_as_mpiprop_does(bench):
    """One rank, no allreduce: after two steps from the same weights, both loops hold the same parameters."""
    import mpiprop.network as nn

    widths = (32, 24, 16, 10)
    x, y = bench.synthetic_batch(0, 8, widths)
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 10))
    hand_params = [p.data.copy() for p in model.parameters()]
    hand_step = bench.hand_written_step(x, y, None, synchronised=False, params=hand_params, widths=widths)
    optimizer = nn.optim.SGD(model.parameters(), lr=bench.LEARNING_RATE, momentum=bench.MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(2):
        optimizer.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()
        hand_step()
    for p, mine in zip(model.parameters(), hand_params):
        numpy.testing.assert_allclose(p.data, mine, rtol=1e-5, atol=1e-6)
