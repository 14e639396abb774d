"""Pipeline schedules as pure step lists: literal orders, completeness, deadlock freedom, bubbles, stash peaks."""
import pytest

from mpiprop.distributed.pipeline.pipeline_schedules import (Step, format_steps, forward_only, gpipe,
                                                             interleaved_one_f_one_b, one_f_one_b, peak_in_flight,
                                                             zero_bubble_h1)
from mpiprop.distributed.pipeline.schedule_registry import SCHEDULES, schedule_names, schedule_spec
from mpiprop.distributed.pipeline.schedule_simulation import UNIT_COSTS, ScheduleDeadlock, check_schedule, simulate


def compact(schedule):
    return [format_steps(steps) for steps in schedule]


def test_gpipe_runs_all_forwards_then_all_backwards():
    assert compact(gpipe(2, 3)) == ["F0 F1 F2 B0 B1 B2"] * 2


def test_1f1b_warms_up_then_alternates_then_drains():
    assert compact(one_f_one_b(3, 4)) == [
        "F0 F1 F2 B0 F3 B1 B2 B3",
        "F0 F1 B0 F2 B1 F3 B2 B3",
        "F0 B0 F1 B1 F2 B2 F3 B3",
    ]


def test_1f1b_with_fewer_micro_batches_than_stages_is_gpipe_like():
    assert compact(one_f_one_b(4, 2)) == ["F0 F1 B0 B1", "F0 F1 B0 B1", "F0 F1 B0 B1", "F0 B0 F1 B1"]


def test_zero_bubble_h1_keeps_1f1b_order_for_input_gradients_and_defers_weight_gradients_by_stage():
    assert compact(zero_bubble_h1(3, 4)) == [
        "F0 F1 F2 I0 W0 F3 I1 W1 I2 W2 I3 W3",
        "F0 F1 I0 F2 I1 W0 F3 I2 W1 I3 W2 W3",
        "F0 I0 F1 I1 F2 I2 W0 F3 I3 W1 W2 W3",
    ]


def test_interleaved_cycles_chunks_in_groups_of_stages():
    assert compact(interleaved_one_f_one_b(2, 4, 2)) == [
        "F0 F1 F0.1 F1.1 F2 B0.1 F3 B1.1 F2.1 B0 F3.1 B1 B2.1 B3.1 B2 B3",
        "F0 F1 F0.1 B0.1 F1.1 B1.1 F2 B0 F3 B1 F2.1 B2.1 F3.1 B3.1 B2 B3",
    ]


def test_interleaved_with_one_chunk_is_1f1b():
    assert interleaved_one_f_one_b(3, 6, 1) == one_f_one_b(3, 6)


def test_forward_only_runs_each_chunk_over_all_micro_batches():
    assert compact(forward_only(2, 2, 2)) == ["F0 F1 F0.1 F1.1"] * 2


def all_cases():
    for p in range(1, 6):
        for m in range(1, 10):
            yield "gpipe", p, m, 1
            yield "1f1b", p, m, 1
            yield "zb-h1", p, m, 1
            if m % p == 0:
                yield "interleaved", p, m, 2
                yield "interleaved", p, m, 3


@pytest.mark.parametrize("name,p,m,v", list(all_cases()))
def test_every_schedule_is_complete_and_deadlock_free(name, p, m, v):
    schedule = schedule_spec(name).build(p, m, v)
    assert len(schedule) == p
    check_schedule(schedule, m, v)
    run = simulate(schedule, {kind: cost / v for kind, cost in UNIT_COSTS.items()})
    assert all(len(finishes) == len(steps) for finishes, steps in zip(run.finishes, schedule))


@pytest.mark.parametrize("p", [2, 3, 4])
@pytest.mark.parametrize("m", [1, 3, 4, 8])
def test_simulated_bubble_of_gpipe_and_1f1b_is_the_textbook_formula(p, m):
    for name in ("gpipe", "1f1b"):
        bubbles = simulate(schedule_spec(name).build(p, m)).bubble_fractions()
        assert bubbles == pytest.approx([(p - 1) / (m + p - 1)] * p)
        assert schedule_spec(name).bubble(p, m) == pytest.approx((p - 1) / (m + p - 1))


@pytest.mark.parametrize("p,m,v", [(2, 4, 2), (4, 8, 2), (3, 6, 3), (4, 4, 2)])
def test_simulated_bubble_of_interleaved_shrinks_by_the_number_of_chunks(p, m, v):
    costs = {kind: cost / v for kind, cost in UNIT_COSTS.items()}
    bubbles = simulate(interleaved_one_f_one_b(p, m, v), costs).bubble_fractions()
    assert bubbles == pytest.approx([(p - 1) / (v * m + p - 1)] * p)
    assert schedule_spec("interleaved").bubble(p, m, v) == pytest.approx((p - 1) / (v * m + p - 1))


@pytest.mark.parametrize("p,m", [(2, 2), (2, 8), (4, 4), (4, 8), (5, 7)])
def test_zero_bubble_h1_bubble_is_a_third_of_1f1b_with_equal_step_times(p, m):
    run = simulate(zero_bubble_h1(p, m))  # F = I = W = 1
    assert run.makespan == 3 * m + (p - 1)
    assert run.bubble_fractions() == pytest.approx([(p - 1) / (3 * m + p - 1)] * p)
    assert schedule_spec("zb-h1").bubble(p, m) == pytest.approx((p - 1) / (3 * m + p - 1))
    assert simulate(one_f_one_b(p, m)).makespan == 3 * m + 3 * (p - 1)


@pytest.mark.parametrize("p", [1, 2, 4])
@pytest.mark.parametrize("m", [1, 2, 4, 8])
def test_peak_stash_1f1b_at_most_stages_gpipe_all_micro_batches(p, m):
    assert [peak_in_flight(steps) for steps in one_f_one_b(p, m)] == [min(p - s, m) for s in range(p)]
    assert [peak_in_flight(steps) for steps in gpipe(p, m)] == [m] * p
    assert [peak_in_flight(steps) for steps in zero_bubble_h1(p, m)] == [min(p, m)] * p


def test_peak_stash_of_interleaved_counts_every_chunk():
    assert [peak_in_flight(steps) for steps in interleaved_one_f_one_b(2, 4, 2)] == [5, 3]


def test_a_cyclic_order_is_reported_as_a_deadlock():
    # stage 0 waits for B0 before it forwards micro-batch 1, which stage 1 needs before B0
    schedule = [[Step("forward", 0), Step("backward", 0), Step("forward", 1), Step("backward", 1)],
                [Step("forward", 0), Step("forward", 1), Step("backward", 0), Step("backward", 1)]]
    check_schedule(schedule, 2)
    with pytest.raises(ScheduleDeadlock, match="rank 0 waits at B0"):
        simulate(schedule)


def test_malformed_schedules_are_rejected():
    with pytest.raises(ValueError, match="comes before its backward_input"):
        check_schedule([[Step("forward", 0), Step("backward_weight", 0), Step("backward_input", 0)]], 1)
    with pytest.raises(ValueError, match="repeated"):
        check_schedule([[Step("forward", 0), Step("forward", 0), Step("backward", 0)]], 1)
    with pytest.raises(ValueError, match="micro-batch 1 chunk 0 has steps"):
        check_schedule([[Step("forward", 0), Step("backward", 0), Step("forward", 1)]], 2)


def test_invalid_arguments_name_the_values():
    with pytest.raises(ValueError, match="multiple of the 4 stages, got 6; use micro_batches=8"):
        interleaved_one_f_one_b(4, 6, 2)
    with pytest.raises(ValueError, match="unknown pipeline schedule 'pipedream'"):
        schedule_spec("pipedream")
    with pytest.raises(ValueError, match="virtual_stages=2"):
        schedule_spec("1f1b").build(2, 4, virtual_stages=2)
    with pytest.raises(ValueError, match="micro_batches must be a positive integer, got 0"):
        gpipe(2, 0)
    with pytest.raises(ValueError, match="step kind"):
        Step("sideways", 0)


def test_steps_are_immutable_records_with_a_compact_text_form():
    step = Step("backward_input", 3, chunk=1)
    assert str(step) == "I3.1" and str(Step("forward", 2)) == "F2"
    with pytest.raises(AttributeError):
        step.micro_batch = 4


def test_forward_only_schedules_are_checked_as_such():
    check_schedule(forward_only(3, 4, 2), 4, 2, training=False)
    with pytest.raises(ValueError, match="has steps"):
        check_schedule(gpipe(2, 2), 2, training=False)


def test_the_registry_names_every_schedule_once_with_its_builder_and_defaults():
    assert schedule_names() == ["gpipe", "1f1b", "interleaved", "zb-h1"]
    assert {name: spec.default_virtual_stages for name, spec in SCHEDULES.items()} == {
        "gpipe": 1, "1f1b": 1, "interleaved": 2, "zb-h1": 1}
    assert schedule_spec("gpipe").build(2, 3) == gpipe(2, 3)
    assert schedule_spec("1f1b").build(3, 4) == one_f_one_b(3, 4)
    assert schedule_spec("zb-h1").build(3, 4) == zero_bubble_h1(3, 4)
    assert schedule_spec("interleaved").build(2, 4) == interleaved_one_f_one_b(2, 4, 2)
    assert schedule_spec("interleaved").bubble(2, 4) == pytest.approx(1 / 9)


@pytest.mark.parametrize("name", schedule_names())
@pytest.mark.parametrize("p,m", [(2, 4), (4, 8)])
def test_every_registered_bubble_formula_is_what_the_simulation_measures(name, p, m):
    """Equal forward, input- and weight-gradient costs (a backward costs two), per chunk split by the chunks."""
    spec = schedule_spec(name)
    v = spec.default_virtual_stages
    costs = {kind: cost / v for kind, cost in UNIT_COSTS.items()}
    assert simulate(spec.build(p, m), costs).bubble_fractions() == pytest.approx([spec.bubble(p, m)] * p)
