"""Checkpoints key optimizer state by the model's parameter names, so it loads whatever the parameter order."""
import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network.training.checkpoint import (CheckpointError, indexed_optimizer_state, load_checkpoint,
                                        named_optimizer_state, read_checkpoint, save_checkpoint)


def make_model(seed=0):
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))


def trained(model, optimizer):
    x = numpy.random.default_rng(0).standard_normal((8, 4)).astype(numpy.float32)
    for _ in range(2):
        optimizer.zero_grad()
        loss_fn = nn.CrossEntropyLoss()
        loss_fn(model(x), numpy.arange(8) % 2)
        model.backward(loss_fn.backward())
        optimizer.step()


def test_optimizer_state_is_stored_by_name_and_loads_into_another_parameter_order(tmp_path):
    model = make_model()
    optimizer = nn.optim.Adam(model.parameters(), lr=0.01)
    trained(model, optimizer)
    save_checkpoint(tmp_path / "c.npz", model, optimizer)
    assert sorted(read_checkpoint(tmp_path / "c.npz")["optimizer"]["state"]) == ["0.bias", "0.weight", "2.bias",
                                                                                "2.weight"]
    other = make_model(seed=3)
    reordered = nn.optim.Adam(list(reversed(other.parameters())), lr=0.01)
    load_checkpoint(tmp_path / "c.npz", other, reordered)
    for p, state in zip(reordered.params, reordered.state):
        name = next(n for n, q in other.named_parameters() if q is p)
        original = optimizer.state[[n for n, _ in model.named_parameters()].index(name)]
        numpy.testing.assert_array_equal(state["exp_avg"], original["exp_avg"])


def test_a_stage_takes_its_own_entries_and_a_missing_one_is_named():
    state = {"type": "SGD", "hyperparameters": {"lr": 0.1}, "step_count": 3, "state": [{"m": 1}, {"m": 2}, {"m": 3}]}
    named = named_optimizer_state(state, ["0.weight", "0.bias", "4.weight"])
    assert named["state"] == {"0.weight": {"m": 1}, "0.bias": {"m": 2}, "4.weight": {"m": 3}}
    assert indexed_optimizer_state(named, ["4.weight"])["state"] == [{"m": 3}]
    assert indexed_optimizer_state(state, None) is state  # a list from an older file stays as it is
    with pytest.raises(ValueError, match=r"no entry for the parameters \['6.weight'\]"):
        indexed_optimizer_state(named, ["4.weight", "6.weight"])


def test_a_model_of_another_architecture_is_still_refused(tmp_path):
    model = make_model()
    save_checkpoint(tmp_path / "c.npz", model, nn.optim.SGD(model.parameters(), lr=0.1))
    wider = nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 2))
    with pytest.raises(CheckpointError, match=r"'0.weight' is \(4, 6\) in the file but \(4, 7\) in the model"):
        load_checkpoint(tmp_path / "c.npz", wider, nn.optim.SGD(wider.parameters(), lr=0.1))
