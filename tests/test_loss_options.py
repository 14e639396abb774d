"""The losses' PyTorch options (reduction, class weight, label smoothing, ignore_index, probability targets,
pos_weight): values and gradients against torch.nn.functional, and gradient checks by finite differences."""
from __future__ import annotations

import itertools

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network import backend
from mpiprop.network.layers.gradcheck import gradcheck
from mpiprop.network.layers.layer import Layer

torch = pytest.importorskip("torch")
functional = torch.nn.functional

REDUCTIONS = ["mean", "sum", "none"]
CLASSES = 5


def _logits(seed: int, batch: int = 7) -> numpy.ndarray:
    return numpy.random.default_rng(seed).standard_normal((batch, CLASSES)) * 2


def _targets(kind: str, seed: int, batch: int = 7) -> numpy.ndarray:
    rng = numpy.random.default_rng(seed + 100)
    if kind == "probabilities":
        return rng.dirichlet(numpy.ones(CLASSES), size=batch)
    labels = rng.integers(0, CLASSES, size=batch)
    if kind == "indices with ignored":
        labels[[1, 4]] = 3 if seed % 2 else -100  # the ignored label is passed as ignore_index
    return labels


def _ignore_index(kind: str, seed: int) -> int:
    return (3 if seed % 2 else -100) if kind == "indices with ignored" else -100


def _ours_and_torchs(loss, pred, target, grad_output, torch_loss):
    """(our value, our gradient, torch's value, torch's gradient) for one loss call."""
    value = loss(pred, target)
    grad = loss.backward(grad_output=grad_output)
    tpred = torch.tensor(pred, requires_grad=True)
    tvalue = torch_loss(tpred, torch.tensor(target))
    tvalue.backward(None if grad_output is None else torch.tensor(grad_output))
    return value, grad, tvalue.detach().numpy(), tpred.grad.numpy()


def _grad_output(reduction: str, batch: int, shape=None):
    if reduction != "none":
        return None
    return numpy.random.default_rng(7).standard_normal(shape or (batch,))


CROSS_ENTROPY_CASES = list(itertools.product(
    REDUCTIONS, [False, True], [0.0, 0.2, 1.0], ["indices", "indices with ignored", "probabilities"], range(3)))


@pytest.mark.parametrize("reduction, weighted, smoothing, kind, seed", CROSS_ENTROPY_CASES)
def test_cross_entropy_options_match_torch(reduction, weighted, smoothing, kind, seed):
    logits, target = _logits(seed), _targets(kind, seed)
    weight = numpy.random.default_rng(seed).uniform(0.2, 2.0, CLASSES) if weighted else None
    ignore_index = _ignore_index(kind, seed)
    loss = nn.CrossEntropyLoss(weight=weight, ignore_index=ignore_index, reduction=reduction,
                               label_smoothing=smoothing)
    grad_output = _grad_output(reduction, len(logits))

    def torch_loss(tpred, ttarget):
        return functional.cross_entropy(tpred, ttarget, weight=None if weight is None else torch.tensor(weight),
                                        ignore_index=ignore_index, reduction=reduction, label_smoothing=smoothing)

    value, grad, expected_value, expected_grad = _ours_and_torchs(loss, logits, target, grad_output, torch_loss)
    numpy.testing.assert_allclose(value, expected_value, rtol=1e-12, atol=1e-14)
    numpy.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)
    assert isinstance(value, float) == (reduction != "none")


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_cross_entropy_options_keep_the_dtype_and_array_module(xp, dtype):
    logits, labels = _logits(0), _targets("indices with ignored", 0)
    loss = nn.CrossEntropyLoss(weight=xp.asarray(numpy.linspace(0.5, 1.5, CLASSES)), label_smoothing=0.1)
    value = loss(xp.asarray(logits.astype(dtype)), xp.asarray(labels))
    grad = loss.backward()
    assert grad.dtype == dtype and backend.get_array_module(grad) is xp
    reference = functional.cross_entropy(torch.tensor(logits), torch.tensor(labels), label_smoothing=0.1,
                                         weight=torch.tensor(numpy.linspace(0.5, 1.5, CLASSES)))
    assert value == pytest.approx(reference.item(), rel=1e-5 if dtype == numpy.float32 else 1e-12)


BCE_CASES = list(itertools.product(REDUCTIONS, ["none", "per class", "one"], range(3)))


@pytest.mark.parametrize("reduction, pos_weight_kind, seed", BCE_CASES)
def test_bce_with_logits_options_match_torch(reduction, pos_weight_kind, seed):
    rng = numpy.random.default_rng(seed)
    logits = rng.standard_normal((6, 3)) * 3
    target = rng.uniform(0, 1, (6, 3))
    target[0] = [0, 1, 1]
    pos_weight = {"none": None, "per class": rng.uniform(0.1, 5.0, 3), "one": numpy.array([2.5])}[pos_weight_kind]
    loss = nn.BCEWithLogitsLoss(reduction=reduction, pos_weight=pos_weight)
    grad_output = _grad_output(reduction, 6, (6, 3))

    def torch_loss(tpred, ttarget):
        return functional.binary_cross_entropy_with_logits(
            tpred, ttarget, reduction=reduction, pos_weight=None if pos_weight is None else torch.tensor(pos_weight))

    value, grad, expected_value, expected_grad = _ours_and_torchs(loss, logits, target, grad_output, torch_loss)
    numpy.testing.assert_allclose(value, expected_value, rtol=1e-12, atol=1e-14)
    numpy.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_reductions_match_torch(reduction):
    rng = numpy.random.default_rng(3)
    pred, target = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    grad_output = _grad_output(reduction, 4, (4, 3))
    value, grad, expected_value, expected_grad = _ours_and_torchs(
        nn.MSELoss(reduction=reduction), pred, target, grad_output,
        lambda p, t: functional.mse_loss(p, t, reduction=reduction))
    numpy.testing.assert_allclose(value, expected_value, rtol=1e-12)
    numpy.testing.assert_allclose(grad, expected_grad, rtol=1e-12)


def test_a_scalar_grad_output_scales_a_reduced_loss():
    logits, labels = _logits(1), _targets("indices", 1)
    loss = nn.CrossEntropyLoss(reduction="sum")
    loss(logits, labels)
    doubled = loss.backward(grad_output=2.0)
    loss(logits, labels)
    numpy.testing.assert_allclose(doubled, 2.0 * loss.backward(), rtol=1e-15)


def test_cross_entropy_mean_over_ignored_rows_only_is_nan_as_in_torch():
    loss = nn.CrossEntropyLoss(ignore_index=1)
    assert numpy.isnan(loss(_logits(0, batch=2), numpy.array([1, 1])))
    assert numpy.isnan(loss.backward()).all()


# --- gradient checks through network.gradcheck ----------------------------------------------


class LossAsLayer(Layer):
    """A loss with fixed targets as a layer: forward gives the loss (a length-1 array unless unreduced),
    backward feeds the arriving gradient in as grad_output."""

    def __init__(self, loss: nn.Loss, target: numpy.ndarray):
        super().__init__()
        self.loss, self.target = loss, target

    def forward(self, x):
        value, cache = self.loss.forward(x, self.target)
        return (value if self.loss.reduction == "none" else numpy.array([value])), cache

    def backward_input(self, dy, cache):
        return self.loss.backward(cache, grad_output=dy if self.loss.reduction == "none" else float(dy[0]))


GRADCHECK_CASES = {
    "cross_entropy weighted, smoothed, ignoring": lambda r: (
        nn.CrossEntropyLoss(weight=numpy.linspace(0.5, 2, CLASSES), label_smoothing=0.3, ignore_index=3, reduction=r),
        _targets("indices with ignored", 1)),
    "cross_entropy probabilities, weighted, smoothed": lambda r: (
        nn.CrossEntropyLoss(weight=numpy.linspace(0.5, 2, CLASSES), label_smoothing=0.1, reduction=r),
        _targets("probabilities", 1)),
    "bce pos_weight": lambda r: (
        nn.BCEWithLogitsLoss(reduction=r, pos_weight=numpy.linspace(0.5, 3, CLASSES)),
        numpy.random.default_rng(4).uniform(0, 1, (7, CLASSES))),
    "mse": lambda r: (nn.MSELoss(reduction=r), numpy.random.default_rng(5).standard_normal((7, CLASSES))),
}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", sorted(GRADCHECK_CASES))
def test_loss_options_pass_the_gradient_check(name, reduction):
    loss, target = GRADCHECK_CASES[name](reduction)
    gradcheck(LossAsLayer(loss, target), _logits(1), rtol=1e-6, atol=1e-8)


# --- errors -------------------------------------------------------------------------------


def test_settings_that_make_no_sense_are_refused():
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"):
        nn.MSELoss(reduction="avg")
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\], got 1.5"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match=r"weight must be a one-dimensional array .* shape \(2, 5\)"):
        nn.CrossEntropyLoss(weight=numpy.ones((2, 5)))
    with pytest.raises(ValueError, match="pos_weight must be a numpy or cupy array, got list"):
        nn.BCEWithLogitsLoss(pos_weight=[1.0, 2.0])


def test_inputs_that_do_not_fit_the_options_are_refused():
    logits = _logits(0)
    with pytest.raises(ValueError, match="weight has 3 entries but the logits have 5 classes"):
        nn.CrossEntropyLoss(weight=numpy.ones(3))(logits, _targets("indices", 0))
    with pytest.raises(ValueError, match="ignore_index=2 applies to class-index targets but got class probabilities"):
        nn.CrossEntropyLoss(ignore_index=2)(logits, _targets("probabilities", 0))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\) for 5 classes, got values from -1 to .*"
                                         r"only ignore_index=-100 may lie outside"):
        nn.CrossEntropyLoss()(logits, numpy.array([0, 1, -1, 2, 3, 4, 0]))
    with pytest.raises(ValueError, match=r"pos_weight of shape \(4,\) does not broadcast to the targets' shape "
                                         r"\(7, 5\)"):
        nn.BCEWithLogitsLoss(pos_weight=numpy.ones(4))(logits, numpy.zeros((7, 5)))


def test_unreduced_backward_needs_a_grad_output_of_the_loss_shape():
    loss = nn.CrossEntropyLoss(reduction="none")
    loss(_logits(0), _targets("indices", 0))
    with pytest.raises(ValueError, match=r"returns one loss per element of shape \(7,\); pass "
                                         r"backward\(grad_output=...\)"):
        loss.backward()
    loss(_logits(0), _targets("indices", 0))
    with pytest.raises(ValueError, match=r"grad_output has shape \(3,\) but the loss has shape \(7,\)"):
        loss.backward(grad_output=numpy.ones(3))


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_the_trainer_refuses_a_loss_that_is_not_a_mean(reduction):
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(ValueError, match=f"needs loss_fn with reduction='mean', got reduction='{reduction}'"):
        nn.Trainer(model, nn.CrossEntropyLoss(reduction=reduction), nn.optim.SGD(model.parameters(), lr=0.1))
