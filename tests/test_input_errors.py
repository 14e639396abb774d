"""Bad input raises ValueError or TypeError at the public boundary, with a message naming the values."""
from __future__ import annotations

import re

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network import backend

needs_gpu = pytest.mark.skipif(not backend.cupy_available(), reason="needs cupy and a GPU to mix devices")
needs_no_gpu = pytest.mark.skipif(backend.cupy_available(), reason="checks the error raised when cupy or a GPU is missing")


def floats(*shape, dtype=numpy.float32) -> numpy.ndarray:
    return numpy.random.default_rng(0).standard_normal(shape).astype(dtype)


# --- layer construction ---------------------------------------------------------------------


@pytest.mark.parametrize("args, error, message", [
    ((0, 3), ValueError, "Linear in_features must be a positive integer, got 0"),
    ((3, -2), ValueError, "Linear out_features must be a positive integer, got -2"),
    ((2.5, 3), TypeError, r"Linear in_features must be a positive integer, got 2.5 of type float"),
    ((True, 3), TypeError, "got True of type bool"),
    (("4", 3), TypeError, "got '4' of type str"),
])
def test_linear_sizes_must_be_positive_integers(args, error, message):
    with pytest.raises(error, match=message):
        nn.Linear(*args)


def test_linear_accepts_numpy_integer_sizes():
    assert nn.Linear(numpy.int64(3), numpy.int32(2)).weight.shape == (3, 2)


def test_batchnorm_arguments_are_checked():
    with pytest.raises(ValueError, match="BatchNorm1d num_features must be a positive integer, got 0"):
        nn.BatchNorm1d(0)
    with pytest.raises(ValueError, match="BatchNorm1d eps must be >= 0, got -1e-05"):
        nn.BatchNorm1d(3, eps=-1e-5)
    with pytest.raises(ValueError, match="BatchNorm1d momentum must be >= 0, got -0.1"):
        nn.BatchNorm1d(3, momentum=-0.1)


@pytest.mark.parametrize("dtype", [numpy.int32, numpy.bool_, numpy.complex64])
@pytest.mark.parametrize("layer_class", [nn.Linear, nn.BatchNorm1d])
def test_layers_need_a_floating_parameter_dtype(layer_class, dtype):
    args = (3, 2) if layer_class is nn.Linear else (3,)
    with pytest.raises(TypeError, match=f"{layer_class.__name__} dtype must be a floating type, got {numpy.dtype(dtype)}"):
        layer_class(*args, dtype=dtype)


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), "0.5", None])
def test_dropout_p_outside_zero_one(p):
    with pytest.raises(ValueError, match=r"Dropout probability p must be in \[0, 1\), got " + repr(p).replace(".", r"\.")):
        nn.Dropout(p)


def test_unknown_device_is_named():
    with pytest.raises(ValueError, match="unknown device 'tpu'; use 'cpu' or 'cuda'"):
        nn.Linear(2, 2, device="tpu")


@needs_no_gpu
def test_cuda_without_cupy_says_what_is_missing():
    with pytest.raises(ValueError, match="device 'cuda' needs cupy and a GPU"):
        nn.Linear(2, 2, device="cuda")
    with pytest.raises(ValueError, match="device 'cuda' needs cupy and a GPU"):
        nn.Sequential(nn.Linear(2, 2)).to(device="cuda")


def test_sequential_rejects_things_that_are_not_layers():
    with pytest.raises(TypeError, match="Sequential argument 1 is a str, not a network Layer"):
        nn.Sequential(nn.Linear(2, 3), "relu")


# --- layer inputs ---------------------------------------------------------------------------


def test_wrong_input_width_names_both_widths():
    with pytest.raises(ValueError, match=r"Linear\(4, 3, bias=True\) expects input of shape \(\.\.\., 4\) with a batch dimension first, but got \(2, 5\)"):
        nn.Linear(4, 3).forward(floats(2, 5))


def test_mismatched_widths_inside_a_model_name_the_layer():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(5, 2))
    with pytest.raises(ValueError, match=r"Linear\(5, 2, bias=True\) expects input of shape \(\.\.\., 5\) with a batch dimension first, but got \(6, 3\)"):
        model(floats(6, 4))


def test_input_without_batch_dimension_is_rejected():
    with pytest.raises(ValueError, match=r"expects input of shape \(\.\.\., 4\) with a batch dimension first, but got \(4,\); .*Flatten"):
        nn.Linear(4, 3).forward(floats(4))


LAYERS_OF_WIDTH_3 = {
    "linear": lambda: nn.Linear(3, 2),
    "batchnorm": lambda: nn.BatchNorm1d(3),
    "relu": nn.ReLU,
    "softmax": nn.Softmax,
    "dropout": lambda: nn.Dropout(0.2),
    "flatten": nn.Flatten,
    "sequential": lambda: nn.Sequential(nn.Linear(3, 2)),
}


@pytest.mark.parametrize("name", sorted(LAYERS_OF_WIDTH_3))
def test_integer_input_is_a_type_error(name):
    with pytest.raises(TypeError, match="must have a floating dtype, got int64; convert with x.astype"):
        LAYERS_OF_WIDTH_3[name]().forward(numpy.ones((2, 3), dtype=numpy.int64))


@pytest.mark.parametrize("name", sorted(LAYERS_OF_WIDTH_3))
def test_a_list_is_not_an_array(name):
    with pytest.raises(TypeError, match="must be a numpy or cupy array, got list"):
        LAYERS_OF_WIDTH_3[name]().forward([[1.0, 2.0, 3.0]])


def test_float64_input_to_a_float32_model():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(TypeError, match=r"float32 weights but got a float64 input; use x.astype\('float32'\) or model.to"):
        model(floats(2, 3, dtype=numpy.float64))


@pytest.mark.parametrize("layer", [nn.Linear(3, 2), nn.LayerNorm(3), nn.Conv1d(3, 2, 1)], ids=repr)
def test_a_dtype_mismatch_names_the_layer(layer):
    with pytest.raises(TypeError, match=re.escape(f"{layer!r} has float32 weights but got a float64 input")):
        layer.forward(floats(2, 3, 4, dtype=numpy.float64) if isinstance(layer, nn.Conv1d) else
                      floats(2, 3, dtype=numpy.float64))


def test_batchnorm_wrong_width_and_single_sample_batches():
    layer = nn.BatchNorm1d(3)
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 3\) or \(batch, 3, length\) but got \(4, 2\)"):
        layer.forward(floats(4, 2))
    with pytest.raises(ValueError, match=r"needs at least 2 values per feature, got input of shape \(1, 3\)"):
        layer.forward(floats(1, 3))
    with pytest.raises(ValueError, match=r"needs at least 2 values per feature, got input of shape \(1, 3, 1\)"):
        layer.forward(floats(1, 3, 1))
    layer.eval().forward(floats(1, 3))  # fine with running statistics


def test_output_gradient_of_the_wrong_shape():
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model(floats(5, 3))
    with pytest.raises(ValueError, match=r"output gradient of shape \(5, 3\) but its output has shape \(5, 2\)"):
        model.backward(floats(5, 3))


@needs_gpu
def test_numpy_input_to_a_gpu_model():
    model = nn.Sequential(nn.Linear(3, 2, device="cuda"))
    with pytest.raises(TypeError, match="input is a numpy array but the parameters are cupy arrays"):
        model(floats(2, 3))


# --- losses ---------------------------------------------------------------------------------


def test_labels_out_of_range_name_the_range():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\) for 3 classes, got values from 0 to 3"):
        nn.CrossEntropyLoss()(floats(4, 3), numpy.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="got values from -1 to 2"):
        nn.CrossEntropyLoss()(floats(4, 3), numpy.array([0, -1, 2, 2]))


def test_labels_must_be_integers_of_shape_batch():
    with pytest.raises(TypeError, match=r"integer class labels of shape \(batch,\), got dtype float64 and shape \(4,\)"):
        nn.CrossEntropyLoss()(floats(4, 3), numpy.array([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(TypeError, match=r"got dtype int64 and shape \(4, 1\)"):
        nn.CrossEntropyLoss()(floats(4, 3), numpy.zeros((4, 1), dtype=numpy.int64))


def test_cross_entropy_logits_must_be_two_dimensional():
    with pytest.raises(ValueError, match=r"logits of shape \(batch, classes\) or \(batch, classes, d1, \.\.\.\), got \(4,\)"):
        nn.CrossEntropyLoss()(floats(4), numpy.array([0, 1, 0, 1]))


@pytest.mark.parametrize("loss_fn, target", [
    (nn.MSELoss(), floats(3, 2)),
    (nn.CrossEntropyLoss(), numpy.array([0, 1, 1])),
    (nn.BCEWithLogitsLoss(), numpy.zeros((3, 2), dtype=numpy.float32)),
], ids=["mse", "cross_entropy", "bce"])
def test_batch_sizes_that_differ(loss_fn, target):
    with pytest.raises(ValueError, match=r"prediction has shape \(4, 2\) but target has shape \(3.*their batch sizes must match"):
        loss_fn(floats(4, 2), target)


def test_mismatched_shapes_in_elementwise_losses():
    with pytest.raises(ValueError, match=r"MSELoss: prediction shape \(4, 2\) differs from target shape \(4,\)"):
        nn.MSELoss()(floats(4, 2), floats(4))
    with pytest.raises(ValueError, match=r"BCEWithLogitsLoss: logits shape \(4, 1\) differs from target shape \(4, 2\)"):
        nn.BCEWithLogitsLoss()(floats(4, 1), numpy.zeros((4, 2)))


def test_bce_targets_outside_zero_one():
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 1\], got values from -1.0 to 2.0"):
        nn.BCEWithLogitsLoss()(floats(3, 1), numpy.array([[-1.0], [0.5], [2.0]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("loss_fn", [nn.MSELoss(), nn.BCEWithLogitsLoss()], ids=["mse", "bce"])
def test_nan_or_inf_reaching_a_loss(loss_fn, bad):
    pred, target = floats(3, 2), numpy.full((3, 2), 0.5, dtype=numpy.float32)
    pred[1, 0] = bad
    name = type(loss_fn).__name__
    with pytest.raises(ValueError, match=f"{name} prediction holds 1 NaN or Inf values out of 6"):
        loss_fn(pred, target)
    pred[1, 0], target[2, 1] = 0.0, bad
    with pytest.raises(ValueError, match=f"{name} target holds 1 NaN or Inf values out of 6"):
        loss_fn(pred, target)


def test_nan_logits_reaching_cross_entropy():
    logits = floats(2, 3)
    logits[0, 0] = float("nan")
    with pytest.raises(ValueError, match="CrossEntropyLoss prediction holds 1 NaN or Inf values out of 6"):
        nn.CrossEntropyLoss()(logits, numpy.array([0, 1]))


def test_an_empty_batch_reaching_a_loss():
    with pytest.raises(ValueError, match=r"CrossEntropyLoss got an empty batch: prediction shape \(0, 3\)"):
        nn.CrossEntropyLoss()(numpy.zeros((0, 3), dtype=numpy.float32), numpy.zeros(0, dtype=numpy.int64))


def test_loss_prediction_and_target_types():
    with pytest.raises(TypeError, match="MSELoss prediction must have a floating dtype, got int64"):
        nn.MSELoss()(numpy.ones((2, 2), dtype=numpy.int64), floats(2, 2))
    with pytest.raises(TypeError, match="MSELoss target must be a numpy or cupy array, got list"):
        nn.MSELoss()(floats(2, 2), [[0.0, 0.0], [0.0, 0.0]])


@needs_gpu
def test_loss_prediction_and_target_on_different_devices():
    cupy = backend.module_for_device("cuda")
    with pytest.raises(TypeError, match="prediction and target live on different devices"):
        nn.MSELoss()(cupy.asarray(floats(2, 2)), floats(2, 2))


# --- optimizers -----------------------------------------------------------------------------


def parameters() -> list[nn.Parameter]:
    return nn.Linear(3, 2).parameters()


@pytest.mark.parametrize("optimizer_class", [nn.optim.SGD, nn.optim.Adam, nn.optim.AdamW])
def test_negative_learning_rate_at_construction(optimizer_class):
    with pytest.raises(ValueError, match="learning rate lr must be >= 0, got -0.1"):
        optimizer_class(parameters(), lr=-0.1)


@pytest.mark.parametrize("optimizer_class", [nn.optim.SGD, nn.optim.Adam])
def test_negative_learning_rate_set_before_step(optimizer_class):
    params = parameters()
    optimizer = optimizer_class(params, lr=0.1)
    before = [p.data.copy() for p in params]
    for p in params:
        p.grad += 1.0
    optimizer.lr = -0.5
    with pytest.raises(ValueError, match="learning rate lr must be >= 0, got -0.5"):
        optimizer.step()
    optimizer.lr = float("nan")
    with pytest.raises(ValueError, match="learning rate lr must be >= 0, got nan"):
        optimizer.step()
    for p, data in zip(params, before):
        numpy.testing.assert_array_equal(p.data, data)


def test_learning_rate_must_be_a_number():
    with pytest.raises(TypeError, match="learning rate lr must be a number, got 'fast'"):
        nn.optim.SGD(parameters(), lr="fast")


def test_sgd_hyperparameters_are_checked():
    with pytest.raises(ValueError, match="SGD momentum must be >= 0, got -0.9"):
        nn.optim.SGD(parameters(), lr=0.1, momentum=-0.9)
    with pytest.raises(ValueError, match="Nesterov momentum needs momentum > 0 and dampening = 0, got momentum=0"):
        nn.optim.SGD(parameters(), lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="SGD weight_decay must be >= 0, got -0.01"):
        nn.optim.SGD(parameters(), lr=0.1, weight_decay=-0.01)


@pytest.mark.parametrize("betas, message", [
    ((1.0, 0.999), r"Adam beta1 must be in \[0, 1\), got 1.0"),
    ((0.9, -0.1), r"Adam beta2 must be in \[0, 1\), got -0.1"),
])
def test_adam_betas_are_checked(betas, message):
    with pytest.raises(ValueError, match=message):
        nn.optim.Adam(parameters(), betas=betas)


def test_optimizer_parameter_list_is_checked():
    with pytest.raises(ValueError, match="SGD got an empty parameter list; pass model.parameters()"):
        nn.optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="Adam parameter 0 is a Linear, not a Parameter"):
        nn.optim.Adam(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(TypeError, match="SGD parameter 1 is a ndarray, not a Parameter"):
        nn.optim.SGD([nn.Parameter(numpy.zeros(2)), numpy.zeros(2)], lr=0.1)
