"""numba's fused CPU loops: the numbers of the numpy passes they replace, inf and NaN alike; a clean refusal."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network.compute import cpu_kernels

needs_numba = pytest.mark.skipif(not cpu_kernels.available(), reason="numba is not installed (mpiprop[numba])")
TOLERANCES = {numpy.float64: 1e-12, numpy.float32: 2e-6}
SCALE, CUBIC = math.sqrt(2 / math.pi), 0.044715


def values(shape, dtype, seed=0):
    return (numpy.random.default_rng(seed).standard_normal(shape) * 2 + 0.5).astype(dtype)


def layer_norm_with_loops_and_with_numpy(layer, x, dy):
    """(output, input gradient, weight gradient) of `layer` with the loops, then with numpy's passes only."""
    def run():
        layer.zero_grad()
        y, cache = layer.forward(x)
        dx = layer.backward(dy, cache)
        return y, dx, None if layer.weight is None else layer.weight.grad.copy()
    with_loops = run()
    with cpu_kernels.disabled():
        with_numpy = run()
    return with_loops, with_numpy


def assert_same_numbers(ours, reference, tolerance):
    """Equal within `tolerance` (relative to the largest value) where finite; inf and NaN in the same places."""
    numpy.testing.assert_array_equal(numpy.isnan(ours), numpy.isnan(reference))
    numpy.testing.assert_array_equal(numpy.isinf(ours), numpy.isinf(reference))
    finite = numpy.isfinite(reference)
    scale = max(1.0, float(numpy.abs(reference[finite]).max(initial=0.0)))
    numpy.testing.assert_allclose(ours[finite], reference[finite], rtol=0, atol=tolerance * scale)
    assert numpy.array_equal(ours[~finite], reference[~finite], equal_nan=True)


@needs_numba
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("shape, normalized_shape", [((0, 8), 8), ((3, 5), 5), ((4, 7, 37), 37), ((2, 3, 128), 128),
                                                     ((2, 3, 4, 5), (4, 5))])
@pytest.mark.parametrize("affine, bias", [(True, True), (True, False), (False, False)])
def test_layer_norm_loops_give_the_numbers_of_numpys_passes(dtype, shape, normalized_shape, affine, bias):
    layer = nn.LayerNorm(normalized_shape, elementwise_affine=affine, bias=bias, dtype=dtype)
    for parameter in layer.parameters():
        parameter.data[...] = values(parameter.shape, dtype, seed=1)
    with_loops, with_numpy = layer_norm_with_loops_and_with_numpy(layer, values(shape, dtype), values(shape, dtype, 2))
    for ours, reference in zip(with_loops, with_numpy):
        if reference is not None:
            assert ours.dtype == reference.dtype and ours.shape == reference.shape
            assert_same_numbers(ours, reference, TOLERANCES[dtype])


@needs_numba
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy's passes meeting inf and NaN
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
def test_layer_norm_loops_keep_inf_and_nan_to_their_rows_as_numpy_does(dtype):
    layer = nn.LayerNorm(6, dtype=dtype)
    x = values((5, 6), dtype)
    x[1, 2], x[3, 0] = numpy.nan, numpy.inf
    dy = values((5, 6), dtype, 3)
    dy[4, 5] = -numpy.inf
    with_loops, with_numpy = layer_norm_with_loops_and_with_numpy(layer, x, dy)
    assert numpy.isnan(with_loops[0][[1, 3]]).all() and numpy.isfinite(with_loops[0][[0, 2, 4]]).all()
    for ours, reference in zip(with_loops, with_numpy):
        assert_same_numbers(ours, reference, TOLERANCES[dtype])


@needs_numba
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy's passes meeting inf and NaN
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("shape", [(0, 4), (3, 5), (2, 7, 33), (300, 700)])  # the last: several cache blocks
def test_tanh_gelu_loops_give_the_numbers_of_numpys_passes(dtype, shape):
    layer = nn.GELU("tanh")
    x, dy = values(shape, dtype) * 2, values(shape, dtype, 4)
    if x.size:
        x.reshape(-1)[:4] = [numpy.inf, -numpy.inf, numpy.nan, 30.0]

    def run():
        y, cache = layer.forward(x)
        return y, layer.backward(dy, cache)
    with_loops = run()
    with cpu_kernels.disabled():
        with_numpy = run()
    for ours, reference in zip(with_loops, with_numpy):
        assert ours.dtype == dtype and ours.shape == shape
        assert_same_numbers(ours, reference, TOLERANCES[dtype])


@needs_numba
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy's passes meeting inf and NaN
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("queries, keys", [(1, 1), (5, 5), (3, 8), (32, 64)])
def test_causal_softmax_loops_give_the_numbers_of_numpys_passes(dtype, queries, keys):
    from mpiprop.network.layers.attention_math import _softmax_of_scores

    q, k = values((2, 3, queries, 4), dtype), values((2, 3, keys, 4), dtype, 5)
    q[1, 2, 0, 0], k[0, 1, keys - 1, 2], q[0, 0, -1, 1] = numpy.nan, numpy.inf, numpy.inf  # a future key's inf too
    with_loops = _softmax_of_scores(q, k)
    with cpu_kernels.disabled():
        with_numpy = _softmax_of_scores(q, k)
    assert with_loops.shape == (2, 3, keys, queries) and with_loops.dtype == dtype
    assert not numpy.isnan(with_numpy).all()
    assert_same_numbers(with_loops, with_numpy, TOLERANCES[dtype])


@needs_numba
@pytest.mark.parametrize("dtype", [numpy.float64, numpy.float32])
@pytest.mark.parametrize("name, options", [("AdamW", dict(weight_decay=0.1)),
                                           ("Adam", dict(weight_decay=0.05, maximize=True, betas=(0.8, 0.99)))])
def test_adam_loop_steps_as_numpys_passes(dtype, name, options):
    def train():
        parameter = nn.Parameter(values((40, 30), dtype))
        optimizer = getattr(nn.optim, name)([parameter], lr=0.01, **options)
        for step in range(4):  # the first step makes the moments; the loop runs from the second
            optimizer.zero_grad()
            parameter.grad += values((40, 30), dtype, seed=10 + step)
            optimizer.step()
        return parameter.data, optimizer.state_dict()["state"][0]
    with_loops, loop_state = train()
    with cpu_kernels.disabled():
        with_numpy, numpy_state = train()
    assert with_loops.dtype == dtype and loop_state["step"] == numpy_state["step"] == 4
    for ours, reference in [(with_loops, with_numpy), (loop_state["exp_avg"], numpy_state["exp_avg"]),
                            (loop_state["exp_avg_sq"], numpy_state["exp_avg_sq"])]:
        assert_same_numbers(ours, reference, TOLERANCES[dtype])


@needs_numba
@pytest.mark.parametrize("case", ["float16", "strided", "mixed dtypes", "wrong shape", "not numpy"])
def test_loops_refuse_what_they_cannot_run_and_write_nothing(case):
    x = values((4, 6), numpy.float32)
    u, output = numpy.full_like(x, 7.0), numpy.full_like(x, 7.0)
    if case == "float16":
        x, u, output = (array.astype(numpy.float16) for array in (x, u, output))
    elif case == "strided":
        x = values((4, 12), numpy.float32)[:, ::2]
    elif case == "mixed dtypes":
        u = u.astype(numpy.float64)
    elif case == "wrong shape":
        output = numpy.full((4, 5), 7.0, numpy.float32)
    elif case == "not numpy":
        x = x.tolist()
    assert cpu_kernels.tanh_gelu_(x, u, output, SCALE, CUBIC) is False
    assert (u == 7).all() and (output == 7).all()
    normalised, inverse_std = numpy.full_like(u, 7.0), numpy.full((4, 1), 7.0, numpy.float32)
    assert cpu_kernels.layer_norm_(x, None, None, 1e-5, output, normalised, inverse_std) is False
    assert (output == 7).all() and (normalised == 7).all() and (inverse_std == 7).all()


@needs_numba
def test_disabled_switches_the_loops_off_inside_the_block_only():
    x = values((2, 3), numpy.float32)
    with cpu_kernels.disabled():
        assert not cpu_kernels.available()
        assert cpu_kernels.tanh_gelu_(x, numpy.empty_like(x), numpy.empty_like(x), SCALE, CUBIC) is False
    assert cpu_kernels.available()
    assert cpu_kernels.tanh_gelu_(x, numpy.empty_like(x), numpy.empty_like(x), SCALE, CUBIC) is True


def run_python(code, **environment):
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, **environment))
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.strip()


def test_environment_variable_turns_the_loops_off():
    code = "from mpiprop.network.compute import cpu_kernels; print(cpu_kernels.available())"
    assert run_python(code, MPIPROP_KERNELS="numpy") == "False"


def test_without_numba_the_layers_take_numpys_passes():
    code = ("import sys; sys.modules['numba'] = None  # `import numba` now raises ImportError\n"
            "import numpy, mpiprop.network as nn\n"
            "from mpiprop.network.compute import cpu_kernels\n"
            "layer = nn.LayerNorm(4); x = numpy.arange(8, dtype=numpy.float32).reshape(2, 4)\n"
            "y, cache = layer.forward(x); layer.backward(numpy.ones_like(x), cache)\n"
            "print(cpu_kernels.available(), [round(float(value), 3) for value in y[0]])")
    assert run_python(code) == "False [-1.342, -0.447, 0.447, 1.342]"


@needs_numba
def test_without_a_writable_cache_each_process_compiles_for_itself(monkeypatch):
    import numba

    compile_for_each_process = numba.njit

    def njit_without_cache_locations(*args, cache=False, **options):
        if cache:
            raise RuntimeError("cannot cache function: no locator available for file")
        return compile_for_each_process(*args, **options)
    monkeypatch.setattr(numba, "njit", njit_without_cache_locations)
    monkeypatch.setattr(cpu_kernels, "_compiled", cpu_kernels._compiled.__wrapped__)
    x = values((3, 4), numpy.float64)
    u, output = numpy.empty_like(x), numpy.empty_like(x)
    assert cpu_kernels.tanh_gelu_(x, u, output, SCALE, CUBIC)
    numpy.testing.assert_allclose(output, 0.5 * x * (1 + numpy.tanh(SCALE * (x + CUBIC * x**3))), rtol=1e-14)
