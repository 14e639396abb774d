"""BatchNorm1d's PyTorch options (affine, track_running_stats, momentum=None, (N, C, L) inputs): against
torch.nn.BatchNorm1d over several steps in both modes, and gradient checks by finite differences."""
from __future__ import annotations

import itertools

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network import backend

torch = pytest.importorskip("torch")

CHANNELS = 3
SHAPES = {"(N, C)": (6, CHANNELS), "(N, C, L)": (4, CHANNELS, 5)}
CASES = list(itertools.product([True, False], [True, False], [0.1, None], sorted(SHAPES)))


def _pair(affine: bool, track: bool, momentum):
    ours = nn.BatchNorm1d(CHANNELS, momentum=momentum, affine=affine, track_running_stats=track, dtype=numpy.float64)
    theirs = torch.nn.BatchNorm1d(CHANNELS, momentum=momentum, affine=affine, track_running_stats=track).double()
    if affine:
        ours.weight.data[...] = [1.5, 0.7, -0.4]
        ours.bias.data[...] = [0.1, -0.2, 0.3]
        with torch.no_grad():
            theirs.weight.copy_(torch.tensor(ours.weight.data))
            theirs.bias.copy_(torch.tensor(ours.bias.data))
    return ours, theirs


def _step(ours, theirs, x, dy):
    """One forward and backward through both; compare outputs and gradients."""
    ours.zero_grad()
    y, cache = ours.forward(x)
    dx = ours.backward(dy, cache)
    tx = torch.tensor(x, requires_grad=True)
    ty = theirs(tx)
    ty.backward(torch.tensor(dy))
    numpy.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-9, atol=1e-11)
    if ours.affine:
        numpy.testing.assert_allclose(ours.weight.grad, theirs.weight.grad.numpy(), rtol=1e-10, atol=1e-12)
        numpy.testing.assert_allclose(ours.bias.grad, theirs.bias.grad.numpy(), rtol=1e-10, atol=1e-12)
        theirs.weight.grad, theirs.bias.grad = None, None


@pytest.mark.parametrize("affine, track, momentum, shape", CASES)
def test_batchnorm_options_match_torch_over_training_and_eval_steps(affine, track, momentum, shape):
    ours, theirs = _pair(affine, track, momentum)
    rng = numpy.random.default_rng(0)
    for training in (True, True, True, False, True, False):
        ours.train(training)
        theirs.train(training)
        x = 1.0 + 2.0 * rng.standard_normal(SHAPES[shape])
        _step(ours, theirs, x, rng.standard_normal(SHAPES[shape]))
    if track:
        numpy.testing.assert_allclose(ours.running_mean, theirs.running_mean.numpy(), rtol=1e-12)
        numpy.testing.assert_allclose(ours.running_var, theirs.running_var.numpy(), rtol=1e-12)
    expected_names = (["weight", "bias"] if affine else []) + (
        ["running_mean", "running_var"] + (["num_batches_tracked"] if momentum is None else []) if track else [])
    assert list(ours.state_dict()) == expected_names


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine, track, shape", [(False, True, "(N, C)"), (True, False, "(N, C)"),
                                                  (True, True, "(N, C, L)"), (False, False, "(N, C, L)")])
def test_batchnorm_options_pass_the_gradient_check(xp, device, affine, track, shape, training):
    layer = nn.BatchNorm1d(CHANNELS, momentum=None, affine=affine, track_running_stats=track, device=device)
    layer.train(training)
    x = xp.asarray(1.0 + 2.0 * numpy.random.default_rng(1).standard_normal(SHAPES[shape]))
    result = nn.gradcheck(layer, x)
    assert set(result.max_abs_error) == {"input"} | ({"weight", "bias"} if affine else set())


def test_cumulative_average_is_the_mean_of_the_batches_statistics(xp, device):
    layer = nn.BatchNorm1d(CHANNELS, momentum=None, dtype=numpy.float64, device=device)
    batches = [numpy.random.default_rng(seed).standard_normal((5, CHANNELS)) + seed for seed in range(4)]
    for x in batches:
        layer.forward(xp.asarray(x))
    numpy.testing.assert_allclose(backend.to_numpy(layer.running_mean),
                                  numpy.mean([x.mean(axis=0) for x in batches], axis=0), rtol=1e-12)
    numpy.testing.assert_allclose(backend.to_numpy(layer.running_var),
                                  numpy.mean([x.var(axis=0, ddof=1) for x in batches], axis=0), rtol=1e-12)
    assert int(layer.num_batches_tracked) == 4


def test_the_batch_counter_survives_a_cast_and_a_state_dict_round_trip():
    layer = nn.BatchNorm1d(CHANNELS, momentum=None)
    layer.forward(numpy.ones((2, CHANNELS), dtype=numpy.float32))
    layer.to(dtype=numpy.float64)
    assert layer.num_batches_tracked.dtype == numpy.int64 and layer.running_mean.dtype == numpy.float64
    copy = nn.BatchNorm1d(CHANNELS, momentum=None, dtype=numpy.float64)
    copy.load_state_dict(layer.state_dict())
    assert int(copy.num_batches_tracked) == 1


def test_without_running_statistics_eval_mode_still_needs_two_values_per_feature():
    layer = nn.BatchNorm1d(CHANNELS, track_running_stats=False).eval()
    with pytest.raises(ValueError, match=r"needs at least 2 values per feature, got input of shape \(1, 3\)"):
        layer.forward(numpy.ones((1, CHANNELS), dtype=numpy.float32))
