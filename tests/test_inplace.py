"""add_matmul_ and add_scaled_ on scipy's BLAS: the same numbers as `out += a @ b` and `out += alpha * x`, in place."""
from __future__ import annotations

import numpy
import pytest

from mpiprop.network.compute import inplace, mkl_gemm
from mpiprop.network.compute.inplace import add_matmul_, add_scaled_

RNG = numpy.random.default_rng(0)


@pytest.fixture
def blas_calls(monkeypatch) -> list[str]:
    """The names of the scipy BLAS routines called, recorded while the real ones run (MKL's path is off)."""
    calls: list[str] = []
    real = inplace._blas

    def recording(name: str):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(inplace, "_blas", recording)
    with mkl_gemm.disabled():
        yield calls


def matrix(rows: int, columns: int, dtype=numpy.float32) -> numpy.ndarray:
    return RNG.standard_normal((rows, columns)).astype(dtype)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("layout", ["x.T @ dy", "dy @ w.T", "c @ c", "f @ f"])
def test_add_matmul_adds_the_product_into_a_view_of_a_flat_buffer(dtype, layout, blas_calls):
    x, dy, w = matrix(5, 3, dtype), matrix(5, 4, dtype), matrix(3, 4, dtype)
    a, b = {"x.T @ dy": (x.T, dy), "dy @ w.T": (dy, w.T), "c @ c": (x.T, matrix(5, 4, dtype)),
            "f @ f": (numpy.asfortranarray(x.T), numpy.asfortranarray(dy))}[layout]
    flat = numpy.arange(2 + a.shape[0] * b.shape[1], dtype=dtype)
    out = flat[2:].reshape(a.shape[0], b.shape[1])
    expected = out + a.astype(numpy.float64) @ b.astype(numpy.float64)
    add_matmul_(out, a, b)
    add_matmul_(out, a, b)  # accumulates, like +=
    numpy.testing.assert_allclose(out, expected + a.astype(numpy.float64) @ b.astype(numpy.float64),
                                  rtol=1e-5 if dtype == numpy.float32 else 1e-12)
    assert flat[:2].tolist() == [0, 1]
    assert blas_calls == [("s" if dtype == numpy.float32 else "d") + "gemm"] * 2


def test_a_long_inner_dimension_is_multiplied_apart_then_added(blas_calls):
    x, dy = matrix(8 * inplace.TEMPORARY_PRODUCT_FROM, 3), matrix(8 * inplace.TEMPORARY_PRODUCT_FROM, 8)
    flat = numpy.arange(1 + 3 * 8, dtype=numpy.float32)
    out = flat[1:].reshape(3, 8)
    expected = out + x.T.astype(numpy.float64) @ dy.astype(numpy.float64)
    add_matmul_(out, x.T, dy)
    numpy.testing.assert_allclose(out, expected, rtol=1e-5)
    assert flat[0] == 0
    assert blas_calls == []


@pytest.mark.parametrize("case", ["strided out", "strided operand", "out aliases operand", "float16", "empty"])
def test_add_matmul_falls_back_to_plus_equals(case, blas_calls):
    a, b = matrix(3, 5), matrix(5, 4)
    out = numpy.ones((3, 4), numpy.float32)
    if case == "strided out":
        out = numpy.ones((3, 8), numpy.float32)[:, ::2]
    elif case == "strided operand":
        a = matrix(3, 10)[:, ::2]
    elif case == "out aliases operand":
        a, b = out[:, :3], matrix(3, 4)
    elif case == "float16":
        a, b, out = a.astype(numpy.float16), b.astype(numpy.float16), out.astype(numpy.float16)
    elif case == "empty":
        a, b = matrix(3, 0), matrix(0, 4)
    expected = out.copy()
    expected += a @ b
    add_matmul_(out, a, b)
    numpy.testing.assert_allclose(out, expected, rtol=1e-3 if out.dtype == numpy.float16 else 1e-6)
    assert blas_calls == []


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_add_scaled_updates_a_view_of_a_flat_buffer_in_place(dtype, blas_calls):
    rows, columns = 6, inplace.NUMPY_AXPY_BELOW // 6 + 1  # large enough for BLAS's axpy
    flat, x = RNG.standard_normal(1 + rows * columns).astype(dtype), matrix(rows, columns, dtype)
    expected = flat[1:].reshape(rows, columns) + numpy.asarray(-0.3, dtype) * x
    add_scaled_(flat[1:].reshape(rows, columns), x, -0.3)
    assert blas_calls == [("s" if dtype == numpy.float32 else "d") + "axpy"]
    numpy.testing.assert_allclose(flat[1:].reshape(rows, columns), expected,
                                  rtol=1e-6 if dtype == numpy.float32 else 1e-14, atol=1e-7)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_add_scaled_of_small_arrays_stays_in_numpy(dtype, blas_calls):
    flat, x = RNG.standard_normal(1 + 6 * 7).astype(dtype), matrix(6, 7, dtype)
    expected = flat[1:].reshape(6, 7) + numpy.asarray(-0.3, dtype) * x
    add_scaled_(flat[1:].reshape(6, 7), x, -0.3)
    assert blas_calls == []
    numpy.testing.assert_allclose(flat[1:].reshape(6, 7), expected, rtol=1e-6 if dtype == numpy.float32 else 1e-14)


def test_add_scaled_falls_back_for_strided_arrays(blas_calls):
    out, x = numpy.ones((4, 6), numpy.float32)[:, ::2], matrix(4, 3)
    expected = out + 2.0 * x
    add_scaled_(out, x, 2.0)
    numpy.testing.assert_allclose(out, expected, rtol=1e-6)
    assert blas_calls == []
