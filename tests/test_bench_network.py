"""The network benchmark runs on tiny sizes and reports every throughput and ratio; no timing is asserted."""
from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "1", "--rounds", "1", "--warmup", "0", "--batch", "8"]


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("examples.benchmarks.bench_network")


@pytest.fixture
def timing(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    return importlib.import_module("examples.benchmarks.timing")


def mpiprop_contestants(bench):
    """mpiprop, plus mpiprop on numpy's BLAS where MKL is installed."""
    return {"mpiprop", bench.SAME_BLAS} if bench.mkl_gemm.available() else {"mpiprop"}


def test_without_torch_reports_mpiprop_numpy_and_their_ratio(bench, capsys):
    result = bench.main(TINY + ["--no-torch"])
    assert set(result["samples_per_second"]) == mpiprop_contestants(bench) | {"numpy"}
    assert all(value > 0 for value in result["samples_per_second"].values())
    assert set(result["ratios"]) == {"numpy"} and result["ratios"]["numpy"] > 0
    assert set(result["targets_met"]) == {"numpy"}
    assert result["same_blas_ratios"]["numpy"] > 0
    assert "mpiprop / numpy" in capsys.readouterr().out


def test_with_torch_reports_all_three_and_the_matmul_ratio(bench, capsys):
    pytest.importorskip("torch")
    result = bench.main(TINY + ["--momentum", "0.9"])
    assert set(result["samples_per_second"]) == mpiprop_contestants(bench) | {"numpy", "torch"}
    assert set(result["ratios"]) == {"numpy", "torch"}
    assert all(ratio > 0 for ratio in result["ratios"].values())
    assert result["matmul_ratio"] > 0
    out = capsys.readouterr().out
    assert "mpiprop / torch" in out and "matrix products alone" in out


def test_contestants_start_equal_and_a_different_step_is_caught(bench):
    weights = bench.initial_weights(bench.SIZES, 0)
    batches = bench.random_batches(bench.SIZES, 4, 2, 1)
    same = {"numpy": bench.NumpyStep(bench.SIZES, weights, 0.1, 0.5),
            "mpiprop": bench.MpipropStep(bench.SIZES, weights, 0.1, 0.5)}
    assert bench.check_agreement(same, {"numpy": batches, "mpiprop": batches})["mpiprop"] < bench.AGREEMENT_TOLERANCE
    other_lr = {"numpy": bench.NumpyStep(bench.SIZES, weights, 0.1, 0.5),
                "mpiprop": bench.MpipropStep(bench.SIZES, weights, 0.2, 0.5)}
    with pytest.raises(RuntimeError, match="mpiprop weights differ"):
        bench.check_agreement(other_lr, {"numpy": batches, "mpiprop": batches})


def test_rounds_interleave_in_rotating_order(timing):
    calls = []
    contestants = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    seconds = timing.time_interleaved(contestants, rounds=3, warmup_rounds=1)
    assert calls == list("abc" + "bca" + "cab" + "abc")
    assert {name: len(values) for name, values in seconds.items()} == {"a": 3, "b": 3, "c": 3}
    assert timing.medians({"a": [3.0, 1.0, 2.0]}) == {"a": 2.0}
