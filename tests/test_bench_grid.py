"""The grid benchmark runs on tiny sizes under real mpiexec: the grid, the pipeline and DataParallel compute
the same first step, and the grid's buckets are all launched before its stages' backward ends; no timing
is asserted."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.mpi  # it starts real 2- and 4-rank jobs

ROOT = Path(__file__).resolve().parents[1]


def test_reports_the_grid_against_the_pipeline_and_data_parallel(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("examples.benchmarks.bench_grid")
    summary = bench.main(["--width", "32", "--steps", "2", "--warmup", "1", "--rounds", "1"])
    assert set(summary["samples_per_s"]) == {"data", "pipeline", "grid"}
    assert all(speed > 0 for speed in summary["samples_per_s"].values())
    assert summary["grid_launched_early"] == [1.0] * 4
    assert len(summary["grid_wait_ms"]) == len(summary["data_wait_ms"]) == 4
    out = capsys.readouterr().out
    assert "grid, 2 stages x 2 replicas:" in out and "x the pipeline" in out and "x DataParallel" in out
