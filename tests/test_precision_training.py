"""The Trainer's precision setting: refusals on the CPU, loss scaling that skips an overflowed step and recovers,
and the scaler's state in checkpoints."""
from __future__ import annotations

import numpy
import pytest

import mpiprop.network as nn
from mpiprop.network.training.checkpoint import read_checkpoint
from mpiprop.network.data.loader import ArrayDataset, DataLoader
from mpiprop.network.optim.grad_scaler import GradScaler, ScaledLoss
from mpiprop.network.data.synthetic import synthetic_classification

BATCH = 16


def data():
    x, y = synthetic_classification(64, 5, 3, seed=0, separation=1.5)
    return x.astype(numpy.float32), y


def make_model():
    nn.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.Tanh(), nn.Linear(12, 3))


@pytest.mark.parametrize("precision", ["tf32", "fp16-mixed", "bf16-mixed"])
def test_the_trainer_refuses_modes_the_cpu_cannot_use(precision):
    model = make_model()
    with pytest.raises(ValueError, match=f"precision '{precision}' needs a GPU"):
        nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), precision=precision)


def test_an_overflowed_step_is_skipped_the_scale_shrinks_and_training_goes_on_exactly():
    x, y = data()
    model = make_model()
    scaler = GradScaler(init_scale=2.0 ** 140, backoff_factor=2.0 ** -100)  # float32 gradients * 2**140 are inf
    trainer = nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                         grad_scaler=scaler, quiet=True, print_fn=lambda line: None)
    trainer.fit(DataLoader(ArrayDataset(x, y), BATCH), 1)
    assert (scaler.skipped_steps, scaler.scale_value) == (1, 2.0 ** 40)

    reference = make_model()  # the same batches but the first, unscaled (scaling by powers of two is exact)
    optimizer = nn.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for start in range(BATCH, len(x), BATCH):
        optimizer.zero_grad()
        loss_fn(reference(x[start:start + BATCH]), y[start:start + BATCH])
        reference.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()
    for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        numpy.testing.assert_array_equal(p.data, q.data, err_msg=name)


def test_the_scalers_state_is_checkpointed_and_restored(tmp_path):
    x, y = data()
    checkpoint = tmp_path / "run.ckpt"

    def trainer_with(scaler):
        model = make_model()
        return nn.Trainer(model, nn.CrossEntropyLoss(), nn.optim.SGD(model.parameters(), lr=0.1), grad_scaler=scaler,
                          checkpoint_path=checkpoint, quiet=True, print_fn=lambda line: None)

    first = GradScaler(init_scale=2.0 ** 140, backoff_factor=2.0 ** -100, growth_interval=3)
    trainer_with(first).fit(DataLoader(ArrayDataset(x, y), BATCH), 1)
    saved = read_checkpoint(checkpoint)["meta"]["trainer"]["grad_scaler"]
    assert saved == first.state_dict() and saved["good_steps"] == 0 and saved["scale"] == 2.0 ** 41
    resumed = GradScaler()
    trainer_with(resumed).fit(DataLoader(ArrayDataset(x, y), BATCH), 2, resume_from=checkpoint)
    assert resumed.skipped_steps == 1 and resumed.scale_value == 2.0 ** 42  # grown after 3 more good steps


def test_a_scaled_loss_reports_the_plain_value_and_a_scaled_gradient():
    x, y = data()
    plain, scaled = nn.CrossEntropyLoss(), ScaledLoss(nn.CrossEntropyLoss(), GradScaler(init_scale=8.0))
    assert scaled(x[:, :3], y) == plain(x[:, :3], y)
    numpy.testing.assert_array_equal(scaled.backward(), 8.0 * plain.backward())
