"""Precision modes: names and refusals, half-precision products, the loss scaler against torch, float16 compression."""
from __future__ import annotations

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network.optim.grad_scaler import GradScaler
from mpiprop.network.compute.matmul import matmul
from mpiprop.network.layers.parameter import Parameter
from mpiprop.network.compute.precision import (PRECISIONS, current_precision, precision_for_device, precision_named,
                                       using_precision)
from mpi_launch import run_mpi

FLOAT16_ULP_AT_ONE = 2.0 ** -10


def test_every_mode_is_named_and_an_unknown_name_lists_them():
    assert [precision_named(name).name for name in PRECISIONS] == ["fp32", "tf32", "fp16-mixed", "bf16-mixed"]
    assert precision_named("fp16-mixed").loss_scaling and not precision_named("bf16-mixed").loss_scaling
    with pytest.raises(ValueError, match="unknown precision 'fp8'.*fp32, tf32, fp16-mixed, bf16-mixed"):
        precision_named("fp8")


@pytest.mark.parametrize("name", ["tf32", "fp16-mixed", "bf16-mixed"])
def test_the_cpu_refuses_modes_that_cannot_help(name):
    with pytest.raises(ValueError, match=f"precision '{name}' needs a GPU.*precision='fp32'"):
        precision_for_device(name, "cpu")
    assert precision_for_device("fp32", "cpu").name == "fp32"


def test_using_precision_applies_inside_the_block_only():
    assert current_precision().name == "fp32"
    with using_precision("fp16-mixed") as precision:
        assert current_precision() is precision
    assert current_precision().name == "fp32"


def test_mixed_products_round_inputs_and_output_to_float16_and_accumulate_in_float32():
    rng = numpy.random.default_rng(0)
    a = rng.standard_normal((64, 300)).astype(numpy.float32)
    b = rng.standard_normal((300, 32)).astype(numpy.float32)
    with using_precision("fp16-mixed"):
        product = matmul(a, b)
        product_transposed = matmul(a, b.T.copy(), transpose_b=True)
    exact_of_rounded = a.astype(numpy.float16).astype(numpy.float64) @ b.astype(numpy.float16).astype(numpy.float64)
    assert product.dtype == numpy.float32
    numpy.testing.assert_allclose(product, exact_of_rounded, rtol=FLOAT16_ULP_AT_ONE, atol=1e-3)
    numpy.testing.assert_array_equal(product, product_transposed)
    assert numpy.array_equal(product, product.astype(numpy.float16).astype(numpy.float32))  # a float16 output
    assert not numpy.allclose(product, a @ b, rtol=1e-6, atol=0)  # it is not the float32 product


def test_a_mixed_linear_layer_keeps_float32_weights_and_gradients_close_to_float32():
    nn.manual_seed(0)
    layer = nn.Linear(40, 20)
    x = numpy.random.default_rng(1).standard_normal((16, 40)).astype(numpy.float32)
    dy = numpy.random.default_rng(2).standard_normal((16, 20)).astype(numpy.float32)
    y32, cache = layer.forward(x)
    layer.backward(dy, cache)
    grad32 = layer.weight.grad.copy()
    layer.weight.zero_grad()
    with using_precision("fp16-mixed"):
        y16, cache = layer.forward(x)
        layer.backward(dy, cache)
    assert layer.weight.data.dtype == layer.weight.grad.dtype == y16.dtype == numpy.float32
    numpy.testing.assert_allclose(y16, y32, rtol=1e-2, atol=1e-2)
    numpy.testing.assert_allclose(layer.weight.grad, grad32, rtol=1e-2, atol=2e-2)
    assert not numpy.array_equal(layer.weight.grad, grad32)


def test_bf16_rounds_through_ml_dtypes_or_says_what_to_install():
    a = numpy.full((2, 2), 1 + 2.0 ** -10, numpy.float32)  # exact in float16, not in bfloat16 (8 bits)
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        with using_precision("bf16-mixed"), pytest.raises(ValueError, match="install ml_dtypes"):
            matmul(a, a)
        return
    with using_precision("bf16-mixed"):
        assert numpy.all(matmul(a, a) == 2.0)


def scaler_trajectory_of_torch(gradients, growth_interval):
    torch = pytest.importorskip("torch")
    weight = torch.nn.Parameter(torch.zeros(len(gradients[0]), dtype=torch.float32))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 4, growth_interval=growth_interval)
    scales = []
    for gradient in gradients:
        optimizer.zero_grad()
        weight.grad = torch.tensor(gradient) * scaler.scale(torch.tensor(1.0)).item()
        scaler.step(optimizer)
        scaler.update()
        scales.append(scaler.get_scale())
    return scales, weight.detach().numpy()


def test_grad_scaler_skips_shrinks_and_grows_as_torch_does():
    gradients = [numpy.array(g, numpy.float32) for g in
                 ([1.0, 2.0], [numpy.inf, 1.0], [0.5, 0.5], [0.25, -1.0], [numpy.nan, 0.0], [1.0, 1.0],
                  [2.0, 2.0], [1.0, 0.0], [3.0, 1.0])]
    torch_scales, torch_weight = scaler_trajectory_of_torch(gradients, growth_interval=2)
    weight = Parameter(numpy.zeros(2, numpy.float32))
    optimizer = nn.optim.SGD([weight], lr=0.5)
    scaler = GradScaler(init_scale=2.0 ** 4, growth_interval=2)
    scales, stepped = [], []
    for gradient in gradients:
        weight.grad[...] = gradient * numpy.float32(scaler.scale_value)
        stepped.append(scaler.step(optimizer, [weight]))
        scales.append(scaler.scale_value)
    assert scales == torch_scales
    assert stepped == [True, False, True, True, False, True, True, True, True]
    numpy.testing.assert_array_equal(weight.data, torch_weight)
    assert scaler.skipped_steps == 2


def test_grad_scaler_state_round_trips_and_refuses_foreign_state():
    scaler = GradScaler(init_scale=8.0, growth_interval=3)
    scaler.update(False)
    scaler.update(True)
    scaler.update(False)
    restored = GradScaler()
    restored.load_state_dict(scaler.state_dict())
    assert restored.state_dict() == scaler.state_dict() == {
        "scale": 4.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3, "good_steps": 1,
        "skipped_steps": 1}
    with pytest.raises(ValueError, match=r"lacks \['good_steps'\]"):
        restored.load_state_dict({"scale": 1.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3})


def test_scaled_float16_gradients_survive_where_plain_float16_would_not():
    gradient = numpy.array([3e-6, 1e-7], numpy.float32)
    assert gradient.astype(numpy.float16)[1] != numpy.float32(1e-7)  # float16 loses it unscaled
    scaler = GradScaler(init_scale=2.0 ** 16)
    scaled = scaler.scale(gradient).astype(numpy.float16)
    weight = Parameter(numpy.zeros(2, numpy.float32))
    weight.grad[...] = scaled
    assert not scaler.unscale_([weight])
    numpy.testing.assert_allclose(weight.grad, gradient, rtol=FLOAT16_ULP_AT_ONE)


@pytest.mark.parametrize("bad, message", [
    ({"init_scale": 0}, "init_scale must be positive"), ({"growth_factor": 1.0}, "growth_factor must be above 1"),
    ({"backoff_factor": 1.5}, r"backoff_factor must lie in \(0, 1\)")])
def test_grad_scaler_refuses_bad_settings(bad, message):
    with pytest.raises(ValueError, match=message):
        GradScaler(**bad)


@pytest.mark.parametrize("ranks", [2, 3])
def test_float16_compression_keeps_values_float16_cannot_hold_unscaled(ranks):
    result = run_mpi("float16_compression.py", ranks)
    for rank in range(ranks):
        assert f"rank {rank} ok" in result.stdout, result.stdout + result.stderr
