"""Recompute: bit-identical results to the plain layers, unchanged names, and less activation memory."""
from __future__ import annotations

import re
import tracemalloc

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network.compute import rng
from mpi_launch import run_mpi


def batch(shape, seed=0) -> numpy.ndarray:
    return numpy.random.default_rng(seed).standard_normal(shape).astype(numpy.float32)


def plain_model(seed: int = 0) -> nn.Sequential:
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Tanh(),
                         nn.Dropout(0.3), nn.Linear(8, 8), nn.Dropout(0.2, generator=numpy.random.default_rng(5)),
                         nn.Linear(8, 3))


def wrapped_model(seed: int = 0) -> nn.Sequential:
    """The plain model with layers 2..5 and 6..7 each recomputed."""
    model = plain_model(seed)
    return nn.Sequential(*model[:2], nn.Recompute(model[2:6]), nn.Recompute(model[6:8]), model[8])


def grads(model: nn.Layer) -> dict[str, numpy.ndarray]:
    return {name: p.grad.copy() for name, p in model.named_parameters()}


def run_steps(model: nn.Sequential, steps: int = 3) -> list[tuple]:
    """Forward, backward and an SGD step `steps` times; each step's output, input gradient and gradients."""
    nn.manual_seed(11)
    optimizer = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    results = []
    for step in range(steps):
        x = batch((5, 6), seed=step)
        optimizer.zero_grad()
        y, cache = model.forward(x)
        dx = model.backward(batch(y.shape, seed=100 + step), cache)
        results.append((y, dx, grads(model)))
        optimizer.step()
    return results


def test_training_is_bit_identical_to_the_plain_model_dropout_and_batchnorm_included():
    plain, wrapped = plain_model(), wrapped_model()
    for (y, dx, g), (y_w, dx_w, g_w) in zip(run_steps(plain), run_steps(wrapped)):
        numpy.testing.assert_array_equal(y, y_w)
        numpy.testing.assert_array_equal(dx, dx_w)
        assert g.keys() == g_w.keys()
        for name in g:
            numpy.testing.assert_array_equal(g[name], g_w[name], err_msg=name)
    for (name, value), (name_w, value_w) in zip(plain.state_dict().items(), wrapped.state_dict().items()):
        assert name == name_w
        numpy.testing.assert_array_equal(value, value_w, err_msg=name)


def test_random_streams_continue_as_without_recomputation():
    plain = plain_model()
    run_steps(plain, 1)
    shared_after, own_after = rng.generator(numpy).random(4), plain[7].generator.random(4)
    wrapped = wrapped_model()
    run_steps(wrapped, 1)
    numpy.testing.assert_array_equal(rng.generator(numpy).random(4), shared_after)
    numpy.testing.assert_array_equal(wrapped[3][1].generator.random(4), own_after)


def test_forward_keeps_only_the_input():
    model = nn.Recompute(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    x = batch((3, 4))
    _, cache = model.forward(x)
    assert cache.input is x
    assert cache.replayed is None
    assert not hasattr(cache, "caches")


def test_parameter_names_stay_those_of_the_plain_model():
    plain, wrapped = plain_model(), wrapped_model()
    assert [name for name, _ in wrapped.named_parameters()] == [name for name, _ in plain.named_parameters()]
    assert [name for name, _ in wrapped.named_buffers()] == ["3.running_mean", "3.running_var"]
    assert [name for name, _ in wrapped.children()] == [str(i) for i in range(9)]


def test_a_recompute_alone_numbers_its_layers_from_zero_and_nests():
    inner = nn.Recompute(nn.Linear(2, 2), nn.ReLU())
    outer = nn.Recompute(nn.Linear(2, 2), inner, nn.Linear(2, 2))
    assert [name for name, _ in outer.named_parameters()] == ["0.weight", "0.bias", "1.weight", "1.bias",
                                                              "3.weight", "3.bias"]


def test_indexing_and_slicing_count_the_wrapper_as_one_layer():
    wrapped = wrapped_model()
    assert len(wrapped) == 5
    assert isinstance(wrapped[2], nn.Recompute) and len(wrapped[2]) == 4
    assert isinstance(wrapped[:3][2], nn.Recompute)
    x = batch((5, 6))
    wrapped.eval()
    whole = wrapped.forward(x)[0]
    pieces = wrapped[3:].forward(wrapped[:3].forward(x)[0])[0]
    numpy.testing.assert_array_equal(whole, pieces)


def test_a_slice_of_a_wrapped_model_keeps_the_slice_numbering():
    head = wrapped_model()[:3]
    assert [name for name, _ in head.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias",
                                                             "3.weight", "3.bias"]


def test_state_dicts_and_checkpoints_move_between_plain_and_wrapped(tmp_path):
    plain, wrapped = plain_model(seed=1), wrapped_model(seed=2)
    run_steps(plain, 1)
    nn.save_checkpoint(tmp_path / "plain.ckpt", plain)
    nn.load_checkpoint(tmp_path / "plain.ckpt", wrapped)
    for (name, value), (_, value_w) in zip(plain.state_dict().items(), wrapped.state_dict().items()):
        numpy.testing.assert_array_equal(value, value_w, err_msg=name)
    nn.save_checkpoint(tmp_path / "wrapped.ckpt", wrapped)
    fresh = plain_model(seed=3)
    nn.load_checkpoint(tmp_path / "wrapped.ckpt", fresh)
    numpy.testing.assert_array_equal(fresh[6].weight.data, plain[6].weight.data)


def test_eval_and_train_reach_the_wrapped_layers():
    wrapped = wrapped_model().eval()
    assert not wrapped[2][3].training and not wrapped[3][1].training
    x = batch((5, 6))
    numpy.testing.assert_array_equal(wrapped.forward(x)[0], wrapped.forward(x)[0])
    wrapped.train()
    assert wrapped[2][3].training and wrapped[3][1].training


def test_backward_replays_the_mode_of_its_forward():
    plain, wrapped = plain_model(), wrapped_model()
    x, dy = batch((5, 6)), batch((5, 3), seed=1)
    nn.manual_seed(4)
    plain.forward(x)
    expected = plain.backward(dy, plain.forward(x)[1])
    nn.manual_seed(4)
    wrapped.forward(x)
    y, cache = wrapped.forward(x)
    wrapped.eval()
    numpy.testing.assert_array_equal(wrapped.backward(dy, cache), expected)


def test_to_casts_the_wrapped_parameters():
    wrapped = wrapped_model().to(dtype=numpy.float64)
    assert all(p.dtype == numpy.float64 for p in wrapped.parameters())
    assert wrapped[2][1].running_var.dtype == numpy.float64
    y, _ = wrapped.forward(batch((5, 6)).astype(numpy.float64))
    assert y.dtype == numpy.float64


def test_gradcheck_passes_through_recomputed_dropout():
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Recompute(nn.Tanh(), nn.Dropout(0.4), nn.Linear(5, 5)),
                          nn.Dropout(0.2), nn.Linear(5, 2))
    result = nn.gradcheck(model, batch((3, 4)))
    assert set(result.max_abs_error) == {"input", "0.weight", "0.bias", "3.weight", "3.bias", "5.weight", "5.bias"}


def test_gradcheck_catches_a_wrong_replay():
    nn.manual_seed(1)  # not gradcheck's seed, so a replay from the live streams draws other masks
    model = nn.Sequential(nn.Linear(4, 5), nn.Recompute(nn.Dropout(0.5), nn.Linear(5, 5)))
    model[1]._generator_states = lambda x: []
    with pytest.raises(nn.GradcheckError):
        nn.gradcheck(model, batch((6, 4)))


def test_split_backward_equals_backward():
    x, dy = batch((5, 6)), batch((5, 3), seed=1)
    whole, split = wrapped_model(), wrapped_model()
    nn.manual_seed(2)
    dx = whole.backward(dy, whole.forward(x)[1])
    nn.manual_seed(2)
    _, cache = split.forward(x)
    dx_split = split.backward_input(dy, cache)
    split.backward_weight(dy, cache)
    numpy.testing.assert_array_equal(dx, dx_split)
    for (name, g), (_, g_split) in zip(grads(whole).items(), grads(split).items()):
        numpy.testing.assert_array_equal(g, g_split, err_msg=name)


def test_backward_without_input_gradient_fills_the_same_parameter_gradients():
    x, dy = batch((5, 6)), batch((5, 3), seed=1)
    reference, model = wrapped_model(), nn.Sequential(*wrapped_model()[2:])
    nn.manual_seed(2)
    inputs = reference[:2].forward(x)[0]
    reference[2:].backward(dy, reference[2:].forward(inputs)[1])
    nn.manual_seed(2)
    assert model.backward(dy, model.forward(inputs)[1], input_grad=False) is None
    for p, q in zip(reference[2:].parameters(), model.parameters()):
        numpy.testing.assert_array_equal(p.grad, q.grad)


def test_call_and_backward_use_the_remembered_cache():
    model = nn.Recompute(nn.Linear(4, 3), nn.ReLU())
    x, dy = batch((2, 4)), batch((2, 3), seed=1)
    expected = model[0].backward(dy * (model[0].forward(x)[0] > 0), x)
    model.zero_grad()
    model(x)
    numpy.testing.assert_array_equal(model.backward(dy), expected)


BLOCKS, PAIRS_PER_BLOCK, WIDTH = 8, 4, 128


def deep_mlp(recompute: bool) -> nn.Sequential:
    """BLOCKS blocks of PAIRS_PER_BLOCK (Linear, ReLU) pairs, each block recomputed or not."""
    nn.manual_seed(0)
    blocks = [[layer for _ in range(PAIRS_PER_BLOCK) for layer in (nn.Linear(WIDTH, WIDTH), nn.ReLU())]
              for _ in range(BLOCKS)]
    if recompute:
        return nn.Sequential(*[nn.Recompute(*block) for block in blocks])
    return nn.Sequential(*[layer for block in blocks for layer in block])


def peak_bytes_of_a_training_pass(model: nn.Sequential, x: numpy.ndarray) -> int:
    tracemalloc.start()
    try:
        y, cache = model.forward(x)
        model.backward(numpy.ones_like(y), cache, input_grad=False)
        del y, cache
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_activation_memory_is_lower_with_recomputation():
    x = batch((512, WIDTH))
    plain = peak_bytes_of_a_training_pass(deep_mlp(False), x)
    recomputed = peak_bytes_of_a_training_pass(deep_mlp(True), x)
    # plain keeps each ReLU's output (32 activations) at the end of forward; recomputation keeps
    # the 8 block outputs, plus one block's 4 ReLU outputs and a few gradients during its backward
    assert plain >= BLOCKS * PAIRS_PER_BLOCK * x.nbytes
    assert recomputed <= (BLOCKS + PAIRS_PER_BLOCK + 5) * x.nbytes
    assert recomputed < 0.6 * plain


def test_an_empty_range_is_refused():
    with pytest.raises(ValueError, match="at least one layer"):
        nn.Recompute(nn.Sequential())


def test_backward_weight_alone_recomputes_and_fills_the_parameter_gradients():
    x, dy = batch((3, 4)), batch((3, 2), seed=1)
    reference, model = nn.Recompute(nn.Linear(4, 2)), nn.Recompute(nn.Linear(4, 2))
    model.load_state_dict(reference.state_dict())
    reference.backward(dy, reference.forward(x)[1])
    model.backward_weight(dy, model.forward(x)[1])
    numpy.testing.assert_array_equal(model[0].weight.grad, reference[0].weight.grad)
    numpy.testing.assert_array_equal(model[0].bias.grad, reference[0].bias.grad)


def test_data_parallel_over_recomputed_ranges_gives_the_plain_gradients():
    from mpiprop.distributed import DataParallel

    x, dy = batch((5, 6)), batch((5, 3), seed=1)
    plain, wrapped = plain_model(), plain_model()
    dp = DataParallel(nn.Sequential(nn.Recompute(wrapped[:3]), nn.Recompute(*wrapped[3:])), bucket_cap_mb=1e-5)
    nn.manual_seed(2)
    plain.backward(dy, plain.forward(x)[1], input_grad=False)
    nn.manual_seed(2)
    assert dp.backward(dy, dp.forward(x)[1]) is None
    assert [name for name, _ in dp.named_parameters()] == [name for name, _ in plain.named_parameters()]
    for (name, p), q in zip(plain.named_parameters(), dp.parameters()):
        numpy.testing.assert_array_equal(q.grad, p.grad, err_msg=name)


def test_a_wrapped_range_moves_to_each_device_and_matches_the_plain_layers(xp, device):
    nn.manual_seed(0)
    plain = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.BatchNorm1d(8), nn.Linear(8, 3)).to(device)
    twin = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.BatchNorm1d(8), nn.Linear(8, 3))
    wrapped = nn.Sequential(twin[0], nn.Recompute(twin[1:3]), twin[3]).to(device)
    wrapped.load_state_dict(plain.state_dict())
    x, dy = xp.asarray(batch((5, 6))), xp.asarray(batch((5, 3), seed=1))
    expected, got = plain.backward(dy, plain.forward(x)[1]), wrapped.backward(dy, wrapped.forward(x)[1])
    assert nn.get_array_module(got) is xp
    numpy.testing.assert_array_equal(nn.to_numpy(got), nn.to_numpy(expected))
    for (name, p), (_, q) in zip(plain.named_parameters(), wrapped.named_parameters()):
        numpy.testing.assert_array_equal(nn.to_numpy(q.grad), nn.to_numpy(p.grad), err_msg=name)
    numpy.testing.assert_array_equal(nn.to_numpy(wrapped[1][1].running_mean), nn.to_numpy(plain[2].running_mean))


def test_dropout_from_a_gpu_generator_is_refused_with_the_fix(xp, device):
    if xp is numpy:
        pytest.skip("numpy generators can be replayed")
    model = nn.Recompute(nn.Dropout(0.5))
    with pytest.raises(NotImplementedError, match="keep Dropout layers outside the recomputed range"):
        model.forward(xp.ones((2, 2), dtype=xp.float32))


@pytest.mark.mpi
def test_recompute_inside_a_pipeline_keeps_the_single_process_names_and_results():
    output = run_mpi("pipe_recompute.py", 2).stdout
    assert sorted(re.findall(r"RECOMPUTE-OK rank=(\d)", output)) == ["0", "1"], output
