"""The CNN benchmark runs on tiny sizes, checks agreement with torch and reports both throughputs and their ratio."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_reports_throughputs_ratio_and_layer_times(monkeypatch, capsys):
    pytest.importorskip("torch")
    monkeypatch.syspath_prepend(str(ROOT))
    bench = importlib.import_module("examples.benchmarks.bench_cnn")
    result = bench.main(["--steps", "1", "--rounds", "1", "--warmup", "0", "--batch", "8", "--layers"])
    assert set(result["samples_per_second"]) == {"mpiprop", "torch"}
    assert result["ratio"] > 0 and result["best_round_ratio"] > 0
    assert result["max_difference"] < bench.AGREEMENT_TOLERANCE
    out = capsys.readouterr().out
    assert "mpiprop / torch" in out and "Conv1d(25, 25" in out
