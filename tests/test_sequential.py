"""Sequential: indexing, slicing, names, modes, state dicts, backward variants and micro-batches in flight."""
from __future__ import annotations

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network import backend


def host(array) -> numpy.ndarray:
    return backend.to_numpy(array)


def batch(shape, seed=0, dtype=numpy.float32) -> numpy.ndarray:
    return numpy.random.default_rng(seed).standard_normal(shape).astype(dtype)


def mlp(device: str = "cpu", seed: int = 0) -> nn.Sequential:
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6, device=device), nn.BatchNorm1d(6, device=device), nn.Tanh(),
                         nn.Dropout(0.25), nn.Linear(6, 3, device=device))


def grads(model: nn.Layer) -> dict[str, numpy.ndarray]:
    return {name: host(p.grad).copy() for name, p in model.named_parameters()}


def assert_same_grads(first: dict, second: dict, rtol: float = 1e-6) -> None:
    assert first.keys() == second.keys()
    for name in first:
        numpy.testing.assert_allclose(first[name], second[name], rtol=rtol, atol=1e-7, err_msg=name)


# --- structure ------------------------------------------------------------------------------


def test_indexing_len_and_iteration_return_the_layers():
    layers = [nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)]
    model = nn.Sequential(*layers)
    assert len(model) == 3
    assert model[0] is layers[0] and model[-1] is layers[2]
    assert list(model) == layers


def test_slicing_shares_layers_and_parameters():
    model = mlp()
    tail = model[2:]
    assert isinstance(tail, nn.Sequential) and len(tail) == 3
    assert tail[2] is model[4]
    assert tail.parameters()[0] is model[4].weight
    tail[2].weight.data[...] = 0.5
    numpy.testing.assert_array_equal(model[4].weight.data, 0.5)


def test_slices_compose_to_the_whole_model():
    model = mlp()
    x = batch((5, 4))
    with nn.rng.seeded(1):
        whole = model.forward(x)[0]
    with nn.rng.seeded(1):
        head_output = model[:3].forward(x)[0]
        pieces = model[3:].forward(head_output)[0]
    numpy.testing.assert_allclose(pieces, whole, rtol=1e-6)


def test_parameter_names_follow_positions_like_pytorch():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2), nn.Sequential(nn.BatchNorm1d(2)))
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias", "2.weight", "2.bias", "3.0.weight", "3.0.bias"]
    assert sorted(model.state_dict()) == sorted(names + ["3.0.running_mean", "3.0.running_var"])
    assert [name for name, _ in model[2:].named_parameters()] == ["0.weight", "0.bias", "1.0.weight", "1.0.bias"]


def test_parameter_names_equal_torch_state_dict_keys():
    torch = pytest.importorskip("torch")
    ours = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2), nn.BatchNorm1d(2))
    theirs = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2),
                                 torch.nn.BatchNorm1d(2))
    torch_keys = {key for key in theirs.state_dict() if not key.endswith("num_batches_tracked")}
    assert set(ours.state_dict()) == torch_keys


def test_train_and_eval_propagate_to_nested_layers():
    inner = nn.Sequential(nn.Dropout(0.5), nn.BatchNorm1d(3))
    model = nn.Sequential(nn.Linear(2, 3), inner)
    assert model.eval() is model
    assert not model.training and not inner.training and not inner[0].training and not inner[1].training
    model.train()
    assert model.training and inner[0].training and inner[1].training
    model.train(False)
    assert not inner[1].training


# --- state dicts ----------------------------------------------------------------------------


def test_state_dict_round_trip_reproduces_outputs():
    source, target = mlp(seed=1), mlp(seed=2)
    x = batch((5, 4))
    source.forward(x)  # moves the running statistics away from their initial values
    source.eval()
    target.eval()
    assert not numpy.allclose(source.forward(x)[0], target.forward(x)[0])

    state = source.state_dict()
    target.load_state_dict(state)
    numpy.testing.assert_array_equal(target.forward(x)[0], source.forward(x)[0])
    numpy.testing.assert_array_equal(target[1].running_var, source[1].running_var)


def test_state_dict_holds_copies_and_loading_keeps_the_arrays():
    model = mlp()
    state = model.state_dict()
    weight_array = model[0].weight.data
    model[0].weight.data[...] = 7.0
    assert not numpy.any(state["0.weight"] == 7.0)
    model.load_state_dict(state)
    assert model[0].weight.data is weight_array
    numpy.testing.assert_array_equal(model[0].weight.data, state["0.weight"])


def test_load_state_dict_names_missing_and_unexpected_keys():
    model = mlp()
    state = model.state_dict()
    del state["4.bias"]
    state["9.weight"] = numpy.zeros(3)
    with pytest.raises(KeyError, match=r"missing \['4.bias'\], unexpected \['9.weight'\]"):
        model.load_state_dict(state)


def test_load_state_dict_names_a_wrong_shape():
    model = mlp()
    state = model.state_dict()
    state["0.weight"] = numpy.zeros((6, 4), dtype=numpy.float32)
    with pytest.raises(ValueError, match=r"'0.weight' has shape \(6, 4\) but the model expects \(4, 6\)"):
        model.load_state_dict(state)


# --- forward and backward -------------------------------------------------------------------


def test_call_then_backward_equals_the_explicit_cache_form(xp, device):
    x, dout = xp.asarray(batch((5, 4), 1)), xp.asarray(batch((5, 3), 2))
    implicit, explicit = mlp(device), mlp(device)
    with nn.rng.seeded(3):
        out = implicit(x)
    dx = implicit.backward(dout)
    with nn.rng.seeded(3):
        explicit_out, cache = explicit.forward(x)
    explicit_dx = explicit.backward(dout, cache)
    numpy.testing.assert_array_equal(host(out), host(explicit_out))
    numpy.testing.assert_array_equal(host(dx), host(explicit_dx))
    assert_same_grads(grads(implicit), grads(explicit), rtol=0)


def test_backward_without_a_remembered_forward_raises():
    model = mlp()
    with pytest.raises(RuntimeError, match="Sequential.backward was called without a cache"):
        model.backward(numpy.ones((2, 3), dtype=numpy.float32))


@pytest.mark.parametrize("first_layer", ["linear", "flatten"])
def test_backward_without_input_grad_gives_the_same_parameter_grads(xp, device, first_layer):
    def build():
        model = mlp(device)
        return nn.Sequential(nn.Flatten(), *model) if first_layer == "flatten" else model

    x, dout = xp.asarray(batch((5, 2, 2), 1)), xp.asarray(batch((5, 3), 2))
    if first_layer == "linear":
        x = x.reshape(5, 4)
    full, lean = build(), build()
    with nn.rng.seeded(3):
        full(x)
    with nn.rng.seeded(3):
        lean(x)
    assert full.backward(dout) is not None
    assert lean.backward(dout, input_grad=False) is None
    assert_same_grads(grads(lean), grads(full), rtol=0)


def _split_backward(layer, x, dy):
    """Run backward_input then backward_weight on one forward; return dx and the gradients."""
    _, cache = layer.forward(x)
    dx = layer.backward_input(dy, cache)
    assert all(not numpy.any(host(p.grad)) for p in layer.parameters())  # backward_input leaves grads alone
    layer.backward_weight(dy, cache)
    return host(dx), grads(layer)


@pytest.mark.parametrize("kind", ["linear", "batchnorm", "sequential", "nested"])
def test_backward_input_plus_backward_weight_equals_backward(xp, device, kind):
    def build():
        nn.manual_seed(4)
        if kind == "linear":
            return nn.Linear(4, 3, device=device)
        if kind == "batchnorm":
            return nn.BatchNorm1d(4, device=device)
        model = mlp(device)
        return nn.Sequential(model[:2], model[2:]) if kind == "nested" else model

    x = xp.asarray(batch((5, 4), 1))
    dy = xp.asarray(batch((5, 4 if kind == "batchnorm" else 3), 2))
    whole, split = build(), build()
    with nn.rng.seeded(5):
        _, cache = whole.forward(x)
    expected_dx = host(whole.backward(dy, cache))
    with nn.rng.seeded(5):
        dx, split_grads = _split_backward(split, x, dy)
    numpy.testing.assert_allclose(dx, expected_dx, rtol=1e-6, atol=1e-7)
    assert_same_grads(split_grads, grads(whole))


def test_backward_weight_before_backward_input_raises():
    model = mlp()
    _, cache = model.forward(batch((3, 4)))
    with pytest.raises(RuntimeError, match="needs backward_input to run first"):
        model.backward_weight(numpy.ones((3, 3), dtype=numpy.float32), cache)


@pytest.mark.parametrize("order", ["first_in_first_out", "last_in_first_out"])
def test_two_micro_batches_in_flight_give_the_sequential_grads(xp, device, order):
    x1, x2 = xp.asarray(batch((4, 4), 1)), xp.asarray(batch((4, 4), 2))
    d1, d2 = xp.asarray(batch((4, 3), 3)), xp.asarray(batch((4, 3), 4))
    one_at_a_time, interleaved = mlp(device), mlp(device)

    with nn.rng.seeded(6):
        for x, dout in ((x1, d1), (x2, d2)):
            _, cache = one_at_a_time.forward(x)
            one_at_a_time.backward(dout, cache)
    with nn.rng.seeded(6):  # the same dropout masks, drawn in the same order
        _, cache1 = interleaved.forward(x1)
        _, cache2 = interleaved.forward(x2)
    pending = [(d1, cache1), (d2, cache2)]
    for dout, cache in (pending if order == "first_in_first_out" else pending[::-1]):
        interleaved.backward(dout, cache)
    assert_same_grads(grads(interleaved), grads(one_at_a_time), rtol=1e-5)


def test_to_float64_moves_parameters_grads_and_buffers():
    model = mlp()
    x = batch((5, 4))
    model.eval()
    float32_output = model.forward(x)[0]
    assert model.to(dtype=numpy.float64) is model
    for name, p in model.named_parameters():
        assert p.data.dtype == numpy.float64 and p.grad.dtype == numpy.float64, name
    assert model[1].running_mean.dtype == numpy.float64 and model[1].running_var.dtype == numpy.float64
    float64_output = model.forward(x.astype(numpy.float64))[0]
    assert float64_output.dtype == numpy.float64
    numpy.testing.assert_allclose(float64_output, float32_output, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="float64 weights but got a float32 input"):
        model.forward(x)


def test_whole_model_matches_torch():
    torch = pytest.importorskip("torch")
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5, dtype=numpy.float64), nn.GELU(), nn.Linear(5, 3, dtype=numpy.float64),
                          nn.Softmax())
    reference = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.GELU(), torch.nn.Linear(5, 3),
                                    torch.nn.Softmax(dim=-1)).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            value = torch.tensor(p.data)
            reference.get_parameter(name).copy_(value.T if p.data.ndim == 2 else value)
    x, dout = batch((6, 4), 1, numpy.float64), batch((6, 3), 2, numpy.float64)
    out = model(x)
    model.backward(dout)
    tout = reference(torch.tensor(x))
    tout.backward(torch.tensor(dout))
    numpy.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-12)
    for name, p in model.named_parameters():
        expected = reference.get_parameter(name).grad.numpy()
        numpy.testing.assert_allclose(p.grad, expected.T if p.data.ndim == 2 else expected, rtol=1e-10,
                                      atol=1e-14, err_msg=name)
