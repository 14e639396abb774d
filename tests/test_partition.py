"""Partitioning a Sequential into stages, and cutting batches into micro-batches: pure logic."""
import itertools

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.distributed.pipeline.micro_batches import loss_weights, micro_batch_sizes, micro_batch_slices
from mpiprop.distributed.pipeline.partition import (balance_costs, check_balance, layer_ranges, measure_layer_times,
                                   parameter_counts)


def mlp():
    nn.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def brute_force_best_maximum(costs, parts):
    best = float("inf")
    for cuts in itertools.combinations(range(1, len(costs)), parts - 1):
        bounds = (0, *cuts, len(costs))
        best = min(best, max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:])))
    return best


def test_balance_by_cost_literal_cases():
    assert balance_costs([1, 1, 1, 1], 2) == [2, 2]
    assert balance_costs([4, 1, 1, 1, 1], 2) == [1, 4]
    assert balance_costs([1, 1, 1], 3) == [1, 1, 1]
    assert balance_costs([5], 1) == [1]


def test_cost_free_layers_stay_with_the_layer_before_them():
    # Linear, ReLU, Linear, ReLU, Linear, ReLU, Linear: the cuts fall after a ReLU
    assert balance_costs([10, 0, 10, 0, 10, 0, 10], 2) == [4, 3]
    assert balance_costs([10, 0, 10, 0, 10, 0, 10], 4) == [2, 2, 2, 1]


def test_balance_is_optimal_against_brute_force():
    generator = numpy.random.default_rng(3)
    for _ in range(200):
        n = int(generator.integers(1, 9))
        parts = int(generator.integers(1, n + 1))
        costs = [int(c) for c in generator.integers(0, 20, n)]
        balance = balance_costs(costs, parts)
        assert len(balance) == parts and min(balance) >= 1 and sum(balance) == n
        largest = max(sum(costs[a:b]) for a, b in layer_ranges(balance))
        assert largest == brute_force_best_maximum(costs, parts), (costs, parts, balance)


def test_balance_errors_state_the_numbers():
    with pytest.raises(ValueError, match="cannot cut 3 layers into 4 stages"):
        balance_costs([1, 2, 3], 4)
    with pytest.raises(ValueError, match=r"balance \[3, 4\] sums to 7 but the model has 9 layers"):
        check_balance([3, 4], 9, 2)
    with pytest.raises(ValueError, match=r"balance \[9\] has 1 entries but the pipeline has 2 stages"):
        check_balance([9], 9, 2)
    with pytest.raises(ValueError, match="entry 1 is 0; every stage needs at least one layer"):
        check_balance([9, 0], 9, 2)
    assert check_balance((4, 5), 9, 2) == [4, 5]


def test_layer_ranges_are_contiguous():
    assert layer_ranges([2, 3, 1]) == [(0, 2), (2, 5), (5, 6)]


def test_parameter_counts_per_layer():
    assert parameter_counts(mlp()) == [40, 0, 72, 0, 18]
    assert balance_costs(parameter_counts(mlp()), 2) == [2, 3]


def test_measured_layer_times_cover_every_layer_and_leave_gradients_untouched():
    model = mlp()
    for p in model.parameters():
        p.grad[...] = 0.5
    times = measure_layer_times(model, numpy.ones((16, 4), dtype=numpy.float32), repeats=2)
    assert len(times) == len(model) and all(t > 0 for t in times)
    assert all((p.grad == 0.5).all() for p in model.parameters())


def test_micro_batch_sizes_even_and_uneven():
    assert micro_batch_sizes(8, 4) == [2, 2, 2, 2]
    assert micro_batch_sizes(10, 4) == [3, 3, 2, 2]
    assert [s.stop - s.start for s in micro_batch_slices([3, 3, 2, 2])] == [3, 3, 2, 2]
    assert micro_batch_slices([3, 2]) == [slice(0, 3), slice(3, 5)]
    assert loss_weights([3, 3, 2, 2]) == pytest.approx([0.3, 0.3, 0.2, 0.2])


def test_a_batch_smaller_than_the_micro_batch_count_is_refused():
    with pytest.raises(ValueError, match="a batch of 3 rows cannot be cut into 4 micro-batches"):
        micro_batch_sizes(3, 4)
