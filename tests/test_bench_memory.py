"""The memory benchmark runs on tiny sizes under real mpiexec; its byte counts are checked, no timing is asserted."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--ranks", "2", "--hidden", "8", "--blocks", "1", "--batch-size", "4", "--steps", "2", "--rounds", "1"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("examples.benchmarks.bench_memory")


def test_reports_per_rank_memory_and_the_targets(bench, capsys):
    summary = bench.main(TINY)
    # whole block: (8*32 + 32) + (32*8 + 8) = 552 float32 values; a rank's halves: (8*16 + 16) + (16*8 + 8) = 280
    assert [r["parameters"] for r in summary["data"]["reports"]] == [552 * 4] * 2
    assert [r["parameters"] for r in summary["tensor"]["reports"]] == [280 * 4] * 2
    assert all(r["optimizer_state"] == 2 * r["parameters"] and r["peak_activations"] > 0
               for layout in ("data", "tensor") for r in summary[layout]["reports"])
    assert summary["parameter_memory_ratio"] == pytest.approx(280 / 552)
    assert summary["data"]["samples_per_s"] > 0 and summary["throughput_ratio"] > 0
    assert "targets: parameter_memory_ratio <= 0.3: MISSED; throughput_ratio >= 0.7" in capsys.readouterr().out
