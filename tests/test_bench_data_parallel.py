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


def test_where_the_sums_run_on_a_thread_the_main_thread_variant_runs_beside_them(bench, monkeypatch, capsys):
    """The driver alone, its workers replaced by records: a threaded default brings the main-thread contestant."""
    launched = []

    def fake_launch(args, worker, ranks, timeout=600, variant=None):
        launched.append(variant)
        record = {"ranks": ranks, "samples_per_s": 100.0 * ranks, "step_s": 0.01}
        if ranks > 1 and variant != "independent":
            kind = {None: "shared memory threaded", "main-thread-sums": "shared memory", "mpi-allreduce": "mpi"}
            record.update(allreduce=kind[variant], buckets=2, gradient_allreduce_gb_s=1.0, raw_allreduce_gb_s=1.0,
                          exposed_fraction=0.5, wait_after_backward_s=0.001, gradient_allreduce_s=0.002)
        return record

    monkeypatch.setattr(bench, "launch", fake_launch)
    summary = bench.main(TINY)
    assert launched == [None, "independent", None, "main-thread-sums", "mpi-allreduce"]
    assert summary["data_parallel_main_thread"]["allreduce"] == "shared memory"
    out = capsys.readouterr().out
    assert "DataParallel, shared memory threaded allreduce, 2 buckets" in out
    assert "DataParallel, shared memory allreduce (sums in the main thread), 2 buckets" in out
