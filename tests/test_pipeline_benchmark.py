"""The pipeline benchmark runs on tiny sizes under real mpiexec and reports every registered schedule against
its bound; no timing is asserted."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from mpiprop.distributed.pipeline.schedule_registry import schedule_names, schedule_spec

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--batch", "8", "--micro-batches", "2", "--steps", "1", "--warmup", "1", "--rounds", "1", "--no-torch"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("examples.benchmarks.bench_pipeline")


def test_speedup_bound_is_one_process_time_over_the_busiest_stage_stretched_by_the_bubble(bench):
    # 2 stages, 8 micro-batches, 1F1B: bubble 1/9; stages busy 60 and 40 ms; one process 90 ms
    bubble = schedule_spec("1f1b").bubble(2, 8)
    assert bench.speedup_bound(90.0, [60.0, 40.0], bubble) == pytest.approx(90.0 / (60.0 * 9 / 8))


def test_every_registered_schedule_is_reported_with_its_bound(bench, capsys):
    summary = bench.main(TINY)
    assert list(summary["schedules"]) == schedule_names()
    for name, figures in summary["schedules"].items():
        assert figures["bubble_theory"] == pytest.approx(schedule_spec(name).bubble(2, 2))
        assert figures["speedup_bound"] > 0 and figures["share_of_bound"] > 0
    assert "bound" in capsys.readouterr().out
