"""Predictions with compute contention against hand-computed step times: runs alone, overhead, exposed allreduce."""
from __future__ import annotations

import statistics

import pytest

from mpiprop.launch.contention import (alone_rank_counts, contention_forecast, fit_communication,
                                       paired_extra_seconds, uncontended_forecast)
from mpiprop.launch.modeling import predict_sweep
from mpiprop.launch.perfmodel import Layout, LinkCost, Measurements, Workload, predict, ring_allreduce_seconds

LINK = LinkCost(latency_s=1e-5, bandwidth_bytes_per_s=1e9)
LINKS = {"allreduce": LINK, "p2p": LINK}
BATCH, PARAMETER_BYTES = 512, 2_648_104  # the built-in benchmark's default global batch and gradient bytes
BASE_VALUES = {"samples_per_s": 10_000.0, "global_batch": BATCH, "compute_s_per_sample": 1e-4,
               "parameter_bytes": PARAMETER_BYTES}


def alone(*samples_per_s: float) -> list[dict[str, float]]:
    return [{"samples_per_s": value, "communication": 0.0} for value in samples_per_s]


def data_parallel(*samples_per_s: float) -> list[dict[str, float]]:
    return [{"samples_per_s": value} for value in samples_per_s]


def test_counts_beyond_the_node_take_the_most_asked_ranks_that_fit_it_alone():
    assert alone_rank_counts([1, 2, 4, 8, 16], cores=4, across_nodes=False) == {1: 1, 2: 2, 4: 4, 8: 4, 16: 4}
    assert alone_rank_counts([1, 2, 8, 16], cores=6, across_nodes=False) == {1: 1, 2: 2, 8: 2, 16: 2}
    assert alone_rank_counts([8, 16], cores=6, across_nodes=False) == {8: 6, 16: 6}
    assert alone_rank_counts([1, 8, 16], cores=4, across_nodes=True) == {1: 1, 8: 8, 16: 16}


def test_extra_time_splits_into_overhead_on_one_rank_and_an_exposed_fraction():
    overhead, exposed = fit_communication({1: 0.001, 2: 0.0015, 4: 0.002}, {2: 0.001, 4: 0.002})
    # overhead 1 ms; 2 ranks: (1.5 - 1) / 1 = 0.5; 4 ranks: (2 - 1) / 2 = 0.5
    assert overhead == pytest.approx(0.001) and exposed == pytest.approx(0.5)


def test_ratio_is_absent_without_two_ranks_and_clipped_to_a_fraction_in_predictions():
    assert fit_communication({2: 0.010}, {2: 0.001}) == (0.0, pytest.approx(10.0))
    assert fit_communication({2: -0.001}, {2: 0.001}) == (0.0, pytest.approx(-1.0))  # faster than alone
    assert fit_communication({1: -0.001}, {}) == (0.0, None)  # 1 rank only: no overhead below 0
    runs = {1: alone(10_000.0), 2: alone(19_500.0)}
    slow = contention_forecast(1, BASE_VALUES, LINKS, "strong", {1: data_parallel(10_000.0), 2: data_parallel(500.0)},
                               runs, {1: 1, 2: 2}, cores=2, across_nodes=False)
    assert slow.exposed_allreduce == 1.0 and "may be too high" in slow.note
    fast = contention_forecast(1, BASE_VALUES, LINKS, "strong",
                               {1: data_parallel(10_000.0), 2: data_parallel(19_600.0)}, runs, {1: 1, 2: 2}, cores=2,
                               across_nodes=False)
    assert fast.exposed_allreduce == 0.0
    assert fast.predictions[2].samples_per_s == pytest.approx(19_500.0)


def test_extra_time_pairs_each_run_with_the_run_alone_made_beside_it():
    # the machine's load changed between the pairs: 1,000 vs 1,250 samples/s, then 500 vs 550, then 800 vs 1,000
    extra = paired_extra_seconds(100, data_parallel(1000.0, 500.0, 800.0), alone(1250.0, 550.0, 1000.0))
    assert extra == pytest.approx(statistics.median([0.1 - 0.08, 0.2 - 100 / 550, 0.125 - 0.1]))


def test_prediction_is_the_step_alone_plus_overhead_plus_exposed_allreduce():
    # measured: 1 rank 10,000/s (alone 10,240/s), 2 ranks 18,000/s (alone 19,500/s); alone at 4: 34,000 and 36,000
    measured = {1: data_parallel(10_000.0, 10_000.0), 2: data_parallel(18_000.0, 18_000.0)}
    runs = {1: alone(10_240.0, 10_240.0), 2: alone(19_500.0, 19_500.0), 4: alone(34_000.0, 36_000.0)}
    forecast = contention_forecast(1, BASE_VALUES, LINKS, "strong", measured, runs, {1: 1, 2: 2, 4: 4, 8: 4},
                                   cores=4, across_nodes=False)
    overhead = BATCH / 10_000 - BATCH / 10_240
    exposed = (BATCH / 18_000 - BATCH / 19_500 - overhead) / ring_allreduce_seconds(PARAMETER_BYTES, 2, LINK)
    assert forecast.overhead_s == pytest.approx(overhead) and forecast.exposed_allreduce == pytest.approx(exposed)
    assert 0 < exposed < 1
    step_4 = BATCH / 35_000 + overhead + exposed * ring_allreduce_seconds(PARAMETER_BYTES, 4, LINK)
    assert forecast.predictions[4].samples_per_s == pytest.approx(BATCH / step_4)
    # 8 ranks: per-sample compute of 4 ranks alone (4 / 35,000 s per sample per rank), 64 samples per rank
    step_8 = 4 / 35_000 * BATCH / 8 + overhead + exposed * ring_allreduce_seconds(PARAMETER_BYTES, 8, LINK)
    assert forecast.predictions[8].samples_per_s == pytest.approx(BATCH / step_8)
    assert forecast.predictions[1].samples_per_s == pytest.approx(10_000.0)
    assert forecast.predictions[2].samples_per_s == pytest.approx(18_000.0)  # the fit reproduces what it was fit on
    low = BATCH / (BATCH / 34_000 + overhead + exposed * ring_allreduce_seconds(PARAMETER_BYTES, 4, LINK))
    high = BATCH / (BATCH / 36_000 + overhead + exposed * ring_allreduce_seconds(PARAMETER_BYTES, 4, LINK))
    assert forecast.spread[4] == pytest.approx((low, high))
    assert "measured alone at 4 ranks" in forecast.basis[4]
    assert "extrapolated" in forecast.basis[8] and "4 cores" in forecast.basis[8]


def test_ranks_sharing_a_node_cap_the_prediction_at_their_throughput_alone():
    # On a 16-core node 8 ranks alone reached 51,308 samples/s; the model without contention promised 69,176.
    measured = {1: data_parallel(10_000.0), 2: data_parallel(19_000.0)}
    runs = {1: alone(10_000.0), 2: alone(19_500.0), 4: alone(35_000.0), 8: alone(51_308.0)}
    sources = {1: 1, 2: 2, 4: 4, 8: 8}
    shared_memory = {"allreduce": LinkCost(2e-6, 1e10), "p2p": LinkCost(2e-6, 1e10)}
    with_contention = contention_forecast(1, BASE_VALUES, shared_memory, "strong", measured, runs, sources, cores=16,
                                          across_nodes=False)
    without = uncontended_forecast(1, BASE_VALUES, shared_memory, "strong", [1, 2, 4, 8])
    assert without.predictions[8].samples_per_s > 51_308
    assert with_contention.predictions[8].samples_per_s < 51_308
    assert with_contention.predictions[8].samples_per_s > 0.9 * 51_308  # the modelled allreduce is small here


def test_weak_scaling_keeps_the_batch_per_rank():
    measured = {1: data_parallel(10_000.0)}
    runs = {1: alone(10_000.0), 2: alone(16_000.0)}
    forecast = contention_forecast(1, BASE_VALUES, LINKS, "weak", measured, runs, {1: 1, 2: 2}, cores=2,
                                   across_nodes=False)
    assert forecast.exposed_allreduce == 1.0 and forecast.overhead_s == 0.0  # nothing measured at 2 ranks to fit
    step_2 = 2 * BATCH / 16_000 + ring_allreduce_seconds(PARAMETER_BYTES, 2, LINK)
    assert forecast.predictions[2].samples_per_s == pytest.approx(2 * BATCH / step_2)
    assert "whole modelled allreduce" in forecast.note


def test_without_a_no_communication_variant_the_old_model_says_so():
    forecast = uncontended_forecast(1, BASE_VALUES, LINKS, "strong", [1, 4])
    expected = predict_sweep(1, BASE_VALUES, LINKS, "strong", [1, 4])
    assert forecast.predictions == expected
    assert forecast.spread[4] == (expected[4].samples_per_s, expected[4].samples_per_s)
    assert "no no-communication variant" in forecast.note and "without contention" in forecast.basis[4]


def test_exposed_fraction_scales_only_the_allreduce():
    half = Measurements(1e-4, LINK, LINK, exposed_allreduce=0.5)
    prediction = predict(half, Workload(global_batch=1024, parameter_bytes=4_000_000), Layout(data=8))
    allreduce = 2 * 7 / 8 * 4e6 / 1e9 + 2 * 7 * 1e-5
    assert prediction.allreduce_s == pytest.approx(0.5 * allreduce)
    assert prediction.step_s == pytest.approx(1e-4 * 128 + 0.5 * allreduce)
    assert Measurements.from_dict(half.to_dict()) == half
    with pytest.raises(ValueError, match="between 0 and 1"):
        Measurements(1e-4, LINK, LINK, exposed_allreduce=1.5)
