"""The launch benchmark runs the digits example both ways on 2 ranks and prints its table; no timing is asserted."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.mpi  # it starts real 2-rank jobs

ROOT = Path(__file__).resolve().parents[1]


def test_reports_seconds_per_epoch_of_each_way_of_starting(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("examples.benchmarks.bench_launch")
    medians = bench.main(["--rounds", "1", "--epochs", "2", "--timeout", "180"])
    assert set(medians) == {"mpiexec, no thread variable", "mpiprop run", "mpiexec, OMP_NUM_THREADS=1"}
    assert all(seconds > 0 for seconds in medians.values())
    printed = capsys.readouterr().out
    assert "mpiprop run / plain mpiexec: " in printed and "target within 10%" in printed


def test_at_least_two_epochs_are_needed(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("examples.benchmarks.bench_launch")
    with pytest.raises(SystemExit):
        bench.main(["--epochs", "1"])
