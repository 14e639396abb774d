"""The linear math written once: forward, input gradient and weight gradient on (..., in) inputs, against torch."""
import numpy
import pytest

from mpiprop.network.layers.linear_math import linear_forward, linear_input_grad, linear_weight_grad_

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("leading", [(5,), (2, 3), (2, 1, 4)])
def test_linear_math_equals_torch_in_float64(leading):
    generator = numpy.random.default_rng(0)
    x, weight, bias = generator.standard_normal(leading + (4,)), generator.standard_normal((4, 3)), generator.random(3)
    dy = generator.standard_normal(leading + (3,))
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, weight, bias))
    ty = tx @ tw + tb
    ty.backward(torch.tensor(dy))
    numpy.testing.assert_allclose(linear_forward(x, weight, bias), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(linear_input_grad(dy, weight), tx.grad.numpy(), rtol=1e-12, atol=1e-12)
    weight_grad, bias_grad = numpy.ones((4, 3)), numpy.ones(3)
    linear_weight_grad_(weight_grad, bias_grad, x, dy)
    numpy.testing.assert_allclose(weight_grad, 1 + tw.grad.numpy(), rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(bias_grad, 1 + tb.grad.numpy(), rtol=1e-12, atol=1e-12)
