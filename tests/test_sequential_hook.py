"""Sequential.backward's hooks: every parameter once, before its gradient is first written and once it is complete."""
import numpy
import pytest

import mpiprop.network as nn


def make_model(seed=0):
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))


class GradientSnapshots:
    """Records, at each call, the parameters passed and a copy of every gradient at that moment."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, params):
        self.calls.append(([id(p) for p in params], {id(p): p.grad.copy() for p in self.model.parameters()}))


def data():
    generator = numpy.random.default_rng(0)
    return generator.standard_normal((5, 4)).astype(numpy.float32), generator.standard_normal((5, 3)).astype(numpy.float32)


@pytest.mark.parametrize("input_grad", [True, False])
def test_each_parameter_is_reported_once_when_its_gradient_is_final(input_grad):
    x, dy = data()
    model, plain = make_model(), make_model()
    snapshots = GradientSnapshots(model)
    dx = model.backward(dy, model.forward(x)[1], input_grad=input_grad, on_parameters_final=snapshots)
    plain_dx = plain.backward(dy, plain.forward(x)[1], input_grad=input_grad)
    reported = [pid for ids, _ in snapshots.calls for pid in ids]
    assert sorted(reported) == sorted(id(p) for p in model.parameters()) and len(set(reported)) == len(reported)
    assert reported[:2] == [id(model[4].bias), id(model[4].weight)]  # the last layer first
    final = {id(p): q.grad for p, q in zip(model.parameters(), plain.parameters())}
    for ids, grads in snapshots.calls:
        for pid in ids:
            numpy.testing.assert_array_equal(grads[pid], final[pid])  # already complete when reported
    assert (dx is None) == (not input_grad)
    if input_grad:
        numpy.testing.assert_array_equal(dx, plain_dx)


def test_a_shared_parameter_is_final_after_the_last_layer_backward_visits():
    nn.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    snapshots = GradientSnapshots(model)
    x, _ = data()
    dy = numpy.ones((5, 4), dtype=numpy.float32)
    model.backward(dy, model.forward(x)[1], on_parameters_final=snapshots)
    assert [ids for ids, _ in snapshots.calls] == [[], [], [id(shared.bias), id(shared.weight)]]


def test_backward_weight_reports_every_parameter_once():
    x, dy = data()
    model = make_model()
    snapshots = GradientSnapshots(model)
    cache = model.forward(x)[1]
    model.backward_input(dy, cache)
    model.backward_weight(dy, cache, on_parameters_final=snapshots)
    reported = [pid for ids, _ in snapshots.calls for pid in ids]
    assert sorted(reported) == sorted(id(p) for p in model.parameters()) and len(set(reported)) == len(reported)


def test_each_parameter_is_announced_once_before_its_gradient_is_first_written():
    x, dy = data()
    model = make_model()
    for p in model.parameters():
        p.grad.fill(0)
    snapshots = GradientSnapshots(model)
    model.backward(dy, model.forward(x)[1], on_parameters_written=snapshots)
    assert [ids for ids, _ in snapshots.calls] == [[id(model[4].weight), id(model[4].bias)],
                                                    [id(model[2].weight), id(model[2].bias)],
                                                    [id(model[0].weight), id(model[0].bias)]]
    for ids, grads in snapshots.calls:
        assert all(not grads[pid].any() for pid in ids)  # nothing written yet when announced


def test_a_shared_parameter_is_announced_before_the_first_layer_backward_visits():
    nn.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.Tanh(), shared)
    snapshots = GradientSnapshots(model)
    x, _ = data()
    model.backward(numpy.ones((5, 4), dtype=numpy.float32), model.forward(x)[1], on_parameters_written=snapshots)
    assert [ids for ids, _ in snapshots.calls] == [[id(shared.weight), id(shared.bias)]]
