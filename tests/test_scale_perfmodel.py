"""The performance model against closed forms worked out by hand, and its fits against the costs they came from."""
from __future__ import annotations

import math

import pytest

from mpiprop.launch.modeling import parse_layouts, predict_sweep, with_micro_batches
from mpiprop.launch.perfmodel import (Layout, LinkCost, Measurements, Workload, fit_link, fit_ring_allreduce,
                              pipeline_bubble_fraction, predict, ring_allreduce_seconds)

LINK = LinkCost(latency_s=1e-5, bandwidth_bytes_per_s=1e9)
MEASURED = Measurements(compute_s_per_sample=1e-4, allreduce=LINK, p2p=LinkCost(2e-5, 5e8))


def test_ring_allreduce_closed_form():
    # 4 ranks, 8 MB: 2*3/4 * 8e6/1e9 = 12 ms of bandwidth, 2*3 * 10 us = 60 us of latency
    assert ring_allreduce_seconds(8e6, 4, LINK) == pytest.approx(12e-3 + 6e-5)
    assert ring_allreduce_seconds(8e6, 1, LINK) == 0.0


@pytest.mark.parametrize("stages, micro_batches, expected",
                         [(1, 1, 0.0), (4, 4, 3 / 7), (2, 8, 1 / 9), (8, 1, 7 / 8)])
def test_pipeline_bubble_fraction(stages, micro_batches, expected):
    assert pipeline_bubble_fraction(stages, micro_batches) == pytest.approx(expected)


def test_data_parallel_step_is_local_compute_plus_allreduce():
    workload = Workload(global_batch=1024, parameter_bytes=4_000_000)
    prediction = predict(MEASURED, workload, Layout(data=8))
    compute = 1e-4 * 1024 / 8
    allreduce = 2 * 7 / 8 * 4e6 / 1e9 + 2 * 7 * 1e-5
    assert prediction.step_s == pytest.approx(compute + allreduce)
    assert prediction.samples_per_s == pytest.approx(1024 / (compute + allreduce))
    assert prediction.efficiency == pytest.approx(compute / (compute + allreduce))
    assert prediction.bubble_s == 0 and prediction.p2p_s == 0


def test_single_rank_is_pure_compute_with_efficiency_one():
    prediction = predict(MEASURED, Workload(global_batch=64, parameter_bytes=10**6), Layout(data=1))
    assert prediction.step_s == pytest.approx(64e-4) and prediction.efficiency == pytest.approx(1.0)


def test_pipeline_step_matches_hand_computed_schedule():
    workload = Workload(global_batch=256, parameter_bytes=8_000_000, activation_bytes_per_sample=1000)
    prediction = predict(MEASURED, workload, Layout(data=2, stages=4, micro_batches=8))
    micro_batch = 256 / 2 / 8  # 16 samples
    slot_compute = 1e-4 * micro_batch / 4
    slot_p2p = 2 * (2e-5 + 1000 * micro_batch / 5e8)
    allreduce = 2 * 1 / 2 * (8e6 / 4) / 1e9 + 2 * 1 * 1e-5
    assert prediction.step_s == pytest.approx((8 + 3) * (slot_compute + slot_p2p) + allreduce)
    assert prediction.bubble_s == pytest.approx(3 * slot_compute)
    assert prediction.bubble_s / (prediction.compute_s + prediction.bubble_s) == pytest.approx(
        pipeline_bubble_fraction(4, 8))


def test_free_links_leave_only_the_bubble():
    free = Measurements(1e-4, LinkCost(0.0, 1e30), LinkCost(0.0, 1e30))
    prediction = predict(free, Workload(global_batch=512, parameter_bytes=10**8, activation_bytes_per_sample=10**6),
                         Layout(data=1, stages=4, micro_batches=12))
    assert prediction.efficiency == pytest.approx(1 - pipeline_bubble_fraction(4, 12))


def test_fit_link_recovers_latency_and_bandwidth():
    sizes = [8, 1024, 65536, 1 << 20, 4 << 20]
    fitted = fit_link(sizes, [LINK.seconds(size) for size in sizes])
    assert fitted.latency_s == pytest.approx(LINK.latency_s, rel=1e-6)
    assert fitted.bandwidth_bytes_per_s == pytest.approx(LINK.bandwidth_bytes_per_s, rel=1e-6)


def test_fit_ring_allreduce_inverts_the_ring_formula():
    sizes = [8, 4096, 1 << 20, 4 << 20]
    fitted = fit_ring_allreduce(sizes, [ring_allreduce_seconds(size, 3, LINK) for size in sizes], ranks=3)
    assert fitted.latency_s == pytest.approx(LINK.latency_s, rel=1e-6)
    assert fitted.bandwidth_bytes_per_s == pytest.approx(LINK.bandwidth_bytes_per_s, rel=1e-6)


def test_fits_reject_unusable_measurements():
    with pytest.raises(ValueError, match="two distinct sizes"):
        fit_link([64, 64], [1e-5, 1e-5])
    with pytest.raises(ValueError, match="do not grow"):
        fit_link([8, 1 << 20], [1e-3, 1e-5])
    with pytest.raises(ValueError, match="at least 2 ranks"):
        fit_ring_allreduce([8, 64], [1e-5, 2e-5], ranks=1)


def test_layouts_parse_and_take_default_micro_batches():
    assert parse_layouts("8, 4x2,2X4") == [Layout(8), Layout(4, 2), Layout(2, 4)]
    assert with_micro_batches(Layout(4, 2), None) == Layout(4, 2, 8)
    assert with_micro_batches(Layout(8), None) == Layout(8, 1, 1)
    with pytest.raises(ValueError, match="positive integer"):
        parse_layouts("0x2")
    with pytest.raises(ValueError, match="cannot read layout"):
        parse_layouts("4x2x2")


def test_sweep_predictions_keep_the_global_batch_in_strong_and_the_local_batch_in_weak_scaling():
    values = {"compute_s_per_sample": 1e-4, "parameter_bytes": 4e6, "global_batch": 128}
    links = {"allreduce": LINK, "p2p": LINK}
    strong = predict_sweep(2, values, links, "strong", [2, 8])
    weak = predict_sweep(2, values, links, "weak", [2, 8])
    assert strong[8].step_s == pytest.approx(1e-4 * 128 / 8 + ring_allreduce_seconds(4e6, 8, LINK))
    assert weak[8].step_s == pytest.approx(1e-4 * 64 + ring_allreduce_seconds(4e6, 8, LINK))
    assert weak[8].samples_per_s == pytest.approx(512 / weak[8].step_s)
    assert math.isclose(strong[2].step_s, weak[2].step_s)


def test_sweep_prediction_names_what_a_workload_failed_to_report():
    with pytest.raises(ValueError, match="parameter_bytes"):
        predict_sweep(1, {"compute_s_per_sample": 1e-4, "global_batch": 8, "samples_per_s": 1.0},
                      {"allreduce": LINK, "p2p": LINK}, "strong", [2])
