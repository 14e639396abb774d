"""MKL's gemm for the layers' products: the same numbers as numpy, and a clean refusal where it cannot help."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network.compute import mkl_gemm
from mpiprop.network.compute.inplace import add_matmul_
from mpiprop.network.compute.matmul import matmul

RNG = numpy.random.default_rng(0)
needs_mkl = pytest.mark.skipif(not mkl_gemm.available(), reason="MKL is not installed (pip install mpiprop[mkl])")


def matrix(rows, columns, dtype=numpy.float32):
    return RNG.standard_normal((rows, columns)).astype(dtype)


def reference(a, b):
    return a.astype(numpy.float64) @ b.astype(numpy.float64)


@needs_mkl
@pytest.mark.parametrize("dtype, tolerance", [(numpy.float32, 1e-5), (numpy.float64, 1e-12)])
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_matches_numpy_for_every_transpose(dtype, tolerance, trans_a, trans_b):
    a = matrix(7, 5, dtype) if trans_a else matrix(5, 7, dtype)
    b = matrix(3, 7, dtype) if trans_b else matrix(7, 3, dtype)
    start = matrix(5, 3, dtype)
    out = start.copy()
    assert mkl_gemm.gemm(a, b, out, trans_a=trans_a, trans_b=trans_b, beta=1.0)
    expected = start + reference(a.T if trans_a else a, b.T if trans_b else b)
    numpy.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance)


@needs_mkl
def test_matmul_and_add_matmul_use_mkl_and_agree_with_numpy():
    x, weight, dy = matrix(32, 20), matrix(20, 10), matrix(32, 10)
    numpy.testing.assert_allclose(matmul(x, weight), reference(x, weight), rtol=1e-5, atol=1e-5)
    numpy.testing.assert_allclose(matmul(dy, weight, transpose_b=True), reference(dy, weight.T), rtol=1e-5, atol=1e-5)
    flat = numpy.zeros(20 * 10 + 4, numpy.float32)
    grad = flat[:200].reshape(20, 10)  # a view into a bucket, as under DataParallel
    add_matmul_(grad, x.T, dy)
    add_matmul_(grad, x.T, dy)
    numpy.testing.assert_allclose(grad, 2 * reference(x.T, dy), rtol=1e-5, atol=1e-5)
    assert not flat[200:].any()


@pytest.mark.parametrize("case", ["strided", "other dtype", "wrong shape", "overlapping", "not numpy"])
def test_gemm_refuses_what_it_cannot_do_and_matmul_still_gives_the_product(case):
    a, b, out = matrix(6, 4), matrix(4, 5), numpy.zeros((6, 5), numpy.float32)
    if case == "strided":
        a = matrix(6, 8)[:, ::2]
    elif case == "other dtype":
        b = b.astype(numpy.float64)
    elif case == "wrong shape":
        out = numpy.zeros((6, 4), numpy.float32)
    elif case == "overlapping":
        b = matrix(4, 4)
        out = a  # the product would overwrite its own input
    elif case == "not numpy":
        a = a.tolist()
    assert mkl_gemm.gemm(a, b, out) is False
    if case not in ("wrong shape", "not numpy", "overlapping"):
        numpy.testing.assert_allclose(matmul(a, b), reference(numpy.asarray(a), b), rtol=1e-5, atol=1e-5)


@needs_mkl
def test_disabled_switches_to_numpy_inside_the_block_only():
    with mkl_gemm.disabled():
        assert not mkl_gemm.available()
        assert mkl_gemm.gemm(matrix(2, 2), matrix(2, 2), numpy.zeros((2, 2), numpy.float32)) is False
    assert mkl_gemm.available()


def test_environment_variable_turns_mkl_off():
    code = "from mpiprop.network.compute import mkl_gemm; print(mkl_gemm.available())"
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                               env=dict(os.environ, MPIPROP_BLAS="numpy"))
    assert completed.stdout.strip() == "False", completed.stderr


@needs_mkl
def test_a_linear_layer_computes_the_same_with_and_without_mkl():
    layer = nn.Linear(30, 12)
    x, dy = matrix(16, 30), matrix(16, 12)

    def forward_and_backward():
        layer.zero_grad()
        y, cache = layer.forward(x)
        return y, layer.backward(dy, cache), layer.weight.grad.copy(), layer.bias.grad.copy()

    with_mkl = forward_and_backward()
    with mkl_gemm.disabled():
        with_numpy = forward_and_backward()
    for ours, theirs in zip(with_mkl, with_numpy):
        numpy.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
