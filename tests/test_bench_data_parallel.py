"""The data-parallel benchmark runs on tiny sizes under real mpiexec and reports both DataParallel
variants against the independent ranks; no timing is asserted. Its worker launcher keeps figures
reported before a crash."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.mpi  # every test here runs real multi-rank jobs

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "2", "--rounds", "1", "--warmup", "1", "--batch", "8", "--no-torch"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("examples.benchmarks.bench_data_parallel")


def test_reports_the_shared_memory_and_the_mpi_allreduce(bench, capsys):
    summary = bench.main(TINY)
    assert summary["data_parallel"]["allreduce"] == "shared memory"
    assert summary["data_parallel_mpi"]["allreduce"] == "mpi"
    for variant in ("data_parallel", "data_parallel_mpi"):
        figures = summary[variant]
        assert figures["samples_per_s"] > 0 and figures["weak_scaling_efficiency"] > 0
        assert figures["gradient_allreduce_ms"] > 0 and figures["allreduce_bandwidth_ratio"] > 0
        assert figures["efficiency_against_independent"] > 0
    assert summary["independent_samples_per_s"] > 0
    out = capsys.readouterr().out
    assert "targets (default DataParallel): weak_scaling_efficiency >= 0.9" in out
    assert "efficiency_against_independent >= 0.95" in out


def test_figures_reported_before_a_peer_crashes_on_shutdown_are_kept(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    workers = importlib.import_module("examples.benchmarks.workers")
    script = ROOT / "tests" / "mpi_scripts" / "report_then_crash.py"
    assert workers.run_worker(script, 2, [], timeout=60) == {"samples_per_s": 123.0}
    note = capsys.readouterr().err
    assert "after reporting its result, which is kept" in note and "its last words" in note
    with pytest.raises(RuntimeError, match="before reporting a result"):
        workers.run_worker(script, 2, ["--crash-first"], timeout=60)
