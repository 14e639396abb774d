"""NaN and Inf in training: the error names the step and the layer, or the step is skipped exactly like a hand-skipped batch."""
import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network.training.checkpoint import CheckpointError
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.layers.layer import Layer
from mpiprop.network.training.non_finite import NonFiniteError, first_non_finite_layer, grads_finite, is_finite, non_finite_grads
from mpiprop.network.data.synthetic import synthetic_classification

BATCH = 8


class NaNGradient(Layer):
    """Identity forward; backward turns the gradient into NaN (a broken layer, to poison earlier gradients)."""

    def forward(self, x):
        return x, None

    def backward(self, dy, cache):
        return dy * numpy.nan


def make_model(seed=0, *extra):
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh(), *extra, nn.Linear(12, 3))


def data(samples=48, nan_batch=None):
    x, y = synthetic_classification(samples, 5, 3, seed=0, separation=1.5)
    if nan_batch is not None:
        x[nan_batch * BATCH] = numpy.nan  # one sample of that batch
    return x, y


def trainer(model, **options):
    optimizer = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return nn.Trainer(model, nn.CrossEntropyLoss(), optimizer, quiet=True, **options)


def test_detection_helpers():
    assert is_finite(numpy.ones(3)) and not is_finite(numpy.array([1.0, numpy.inf]))
    model = make_model()
    for p in model.parameters():
        p.grad[...] = 1.0
    assert grads_finite(model.parameters())
    model[2].weight.grad[0, 0] = numpy.nan
    assert not grads_finite(model.parameters())
    assert non_finite_grads(model.named_parameters()) == ["2.weight"]
    model[2].weight.data[0, 0] = numpy.inf
    x = numpy.ones((2, 5), dtype=numpy.float32)
    assert first_non_finite_layer(model, x).startswith("layer 2 (Linear")
    assert first_non_finite_layer(model, x * numpy.nan) == "the input batch"


def test_non_finite_output_raises_naming_step_and_layer():
    model = make_model()
    model[2].weight.data[3, 1] = numpy.nan
    with pytest.raises(NonFiniteError, match=r"step 1 \(epoch 1, batch 1\) on rank 0: .*first in layer 2 \(Linear"):
        trainer(model).fit(DataLoader(ArrayDataset(*data()), BATCH), 1)


def test_non_finite_gradients_raise_naming_the_parameters():
    model = make_model(0, NaNGradient())
    with pytest.raises(NonFiniteError, match=r"step 1 .*gradients of '0.weight', '0.bias' hold NaN or Inf"):
        trainer(model).fit(DataLoader(ArrayDataset(*data()), BATCH), 1)


def test_a_nan_batch_is_skipped_exactly_like_a_batch_left_out_by_hand():
    nan_batch = 2
    model = make_model()
    history = trainer(model, non_finite="skip").fit(DataLoader(ArrayDataset(*data(nan_batch=nan_batch)), BATCH), 2)
    assert [record["skipped_steps"] for record in history] == [1, 1]

    reference = make_model()
    optimizer = nn.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x, y = data()
    for _ in range(2):
        for batch in range(len(x) // BATCH):
            if batch == nan_batch:
                continue
            rows = slice(batch * BATCH, (batch + 1) * BATCH)
            optimizer.zero_grad()
            loss_fn(reference(x[rows]), y[rows])
            reference.backward(loss_fn.backward())
            optimizer.step()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        numpy.testing.assert_allclose(p.data, q.data, rtol=1e-6, atol=1e-7, err_msg=name)
    assert numpy.isfinite(history[0]["loss"])  # the skipped batch is not averaged in


def test_skipping_every_step_ends_in_an_error():
    x, y = data(samples=8 * 25)
    x[:] = numpy.nan
    with pytest.raises(NonFiniteError, match="20 steps in a row had NaN or Inf gradients"):
        trainer(make_model(), non_finite="skip").fit(DataLoader(ArrayDataset(x, y), BATCH), 1)


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="non_finite must be one of"):
        trainer(make_model(), non_finite="ignore")


def test_resume_with_changed_hyperparameters_is_refused(tmp_path):
    path = tmp_path / "run.npz"
    loader = DataLoader(ArrayDataset(*data()), BATCH)
    trainer(make_model(), checkpoint_path=path).fit(loader, 1)
    model = make_model()
    changed = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.5),
                         quiet=True)
    before = [p.data.copy() for p in model.parameters()]
    with pytest.raises(CheckpointError, match=r"momentum=0.9 in the checkpoint but 0.5 now"):
        changed.fit(loader, 2, resume_from=path)
    assert all(numpy.array_equal(p.data, b) for p, b in zip(model.parameters(), before))  # nothing was loaded


def test_resume_with_a_changed_hyperparameter_in_a_later_group_is_refused(tmp_path):
    def grouped(model, second_decay):
        weights, biases = model[0].parameters()[:1] + model[2].parameters()[:1], \
            model[0].parameters()[1:] + model[2].parameters()[1:]
        return nn.optim.SGD([{"params": weights, "weight_decay": 1e-4},
                             {"params": biases, "weight_decay": second_decay}], lr=0.1, momentum=0.9)

    path = tmp_path / "run.npz"
    loader = DataLoader(ArrayDataset(*data()), BATCH)
    model = make_model()
    nn.Trainer(model, nn.CrossEntropyLoss(), grouped(model, 0.0), checkpoint_path=path, quiet=True).fit(loader, 1)
    model = make_model()
    changed = nn.Trainer(model, nn.CrossEntropyLoss(), grouped(model, 1e-3), quiet=True)
    with pytest.raises(CheckpointError, match=r"weight_decay=0.0 in group 1 in the checkpoint but 0.001 now"):
        changed.fit(loader, 2, resume_from=path)
    model = make_model()
    same = nn.Trainer(model, nn.CrossEntropyLoss(), grouped(model, 0.0), quiet=True)
    assert len(same.fit(loader, 2, resume_from=path)) == 2
