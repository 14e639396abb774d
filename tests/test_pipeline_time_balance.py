"""Pipeline(balance="time") measures layer times without leaving a trace on the model or the random generators."""
import numpy

import mpiprop.network as nn
from mpiprop.distributed import Pipeline
from mpiprop.distributed.pipeline.partition import measure_layer_times
from mpiprop.network.compute import rng


def model_with_state() -> nn.Sequential:
    nn.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.3),
                         nn.Linear(8, 6), nn.Dropout(0.2, generator=numpy.random.default_rng(9)), nn.Linear(6, 3))


def snapshot(model: nn.Sequential) -> dict:
    """Everything a measurement could change: parameters, gradients, buffers, every generator's state."""
    state = {name: array.copy() for name, array in model.state_dict().items()}
    state.update({f"{name}.grad": p.grad.copy() for name, p in model.named_parameters()})
    state["shared rng"] = rng.get_rng_state()
    state["own generator"] = model[5].generator.bit_generator.state
    return state


def assert_same(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, numpy.ndarray):
            assert numpy.array_equal(value, after[key]), key
        else:
            assert value == after[key], key


def sample(rows: int = 4) -> numpy.ndarray:
    return numpy.random.default_rng(0).standard_normal((rows, 5)).astype(numpy.float32)


def test_measuring_layer_times_leaves_model_and_generators_bit_for_bit_as_they_were():
    model = model_with_state()
    model[1].running_mean[...] = 0.25
    for p in model.parameters():
        p.grad[...] = 0.5
    before = snapshot(model)
    times = measure_layer_times(model, sample())
    assert len(times) == len(model) and all(t >= 0 for t in times)
    assert_same(before, snapshot(model))


def test_a_time_balanced_pipeline_trains_exactly_like_the_model_never_measured():
    x, y = sample(8), numpy.arange(8) % 3
    measured = model_with_state()
    pipe = Pipeline(measured, 1, "1f1b", balance="time", sample_input=x[:4])
    loss = pipe.train_step(x, y, nn.CrossEntropyLoss())

    reference, loss_fn = model_with_state(), nn.CrossEntropyLoss()
    expected_loss = loss_fn(reference(x), y)
    reference.backward(loss_fn.backward(), input_grad=False)
    assert loss == expected_loss
    assert_same(snapshot(reference), snapshot(measured))
