"""LocalStrategy: the training-step contract in one process equals the hand-written step."""
import math

import numpy
import pytest

import mpiprop.network as nn


def make_model(seed=0):
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def batch():
    generator = numpy.random.default_rng(1)
    return generator.standard_normal((6, 5)).astype(numpy.float32), generator.integers(0, 3, 6)


def test_train_step_equals_forward_loss_and_backward():
    x, y = batch()
    model, plain = make_model(), make_model()
    strategy = nn.LocalStrategy(model)
    loss = strategy.train_step(x, y, nn.CrossEntropyLoss())
    loss_fn = nn.CrossEntropyLoss()
    expected = loss_fn(plain(x), y)
    plain.backward(loss_fn.backward(), input_grad=False)
    assert loss == expected
    numpy.testing.assert_array_equal(strategy.last_output, plain.forward(x)[0])
    for p, q in zip(strategy.parameters(), plain.parameters()):
        numpy.testing.assert_array_equal(p.grad, q.grad)


def test_a_non_finite_output_gives_a_nan_loss_and_nan_gradients():
    x, y = batch()
    x[2, 0] = numpy.nan
    strategy = nn.LocalStrategy(make_model())
    assert math.isnan(strategy.train_step(x, y, nn.CrossEntropyLoss()))
    assert all(numpy.isnan(p.grad).all() for p in strategy.parameters())
    assert strategy.locate_non_finite(x) == "the input batch"


def test_state_names_shapes_and_placement():
    model = make_model()
    strategy = nn.LocalStrategy(model)
    assert strategy.state_shapes() == {"0.weight": (5, 8), "0.bias": (8,), "2.weight": (8, 3), "2.bias": (3,)}
    assert [name for name, _ in strategy.named_parameters()] == list(strategy.state_shapes())
    ranks = strategy.ranks
    assert (ranks.rank, ranks.size, ranks.data_shard, ranks.is_main) == (0, 1, (0, 1), True)
    assert ranks.gather(7) == ranks.gather_model(7) == [7] and ranks.join({"a": 1}) == ranks.cut({"a": 1}) == {"a": 1}
    other = nn.LocalStrategy(make_model(seed=5))
    other.load_state_dict(strategy.state_dict())
    x, _ = batch()
    numpy.testing.assert_array_equal(other.eval().predict(x), model.eval().forward(x)[0])


def test_only_layers_are_accepted():
    with pytest.raises(TypeError, match="LocalStrategy trains a network Layer .* got list"):
        nn.LocalStrategy([nn.Linear(2, 2)])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_an_infinite_loss_of_a_finite_output_gives_nan_gradients():
    nn.manual_seed(0)
    strategy = nn.LocalStrategy(nn.Sequential(nn.Linear(2, 2)))
    x = numpy.full((3, 2), 1e25, dtype=numpy.float32)  # finite outputs whose squares overflow float32
    assert math.isnan(strategy.train_step(x, numpy.zeros((3, 2), dtype=numpy.float32), nn.MSELoss()))
    assert numpy.isfinite(strategy.last_output).all()
    assert all(numpy.isnan(p.grad).all() for p in strategy.parameters())
