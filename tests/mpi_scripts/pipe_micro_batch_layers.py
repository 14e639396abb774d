"""Dropout and BatchNorm in a 2-stage pipeline under mpiexec, against the same model in one process.

Dropout: a pipeline built after manual_seed(0) must train exactly like the sequential model
built after manual_seed(0) (each dropout layer draws from its own stream, and the
micro-batches get the rows of the whole batch's masks), for every schedule.

BatchNorm: each micro-batch is normalised with its own statistics and updates the running
statistics once, in micro-batch order; the reference runs the sequential model micro-batch
by micro-batch with the loss of each weighted by its share of the rows.

Prints "LAYERS-OK rank=R what" per check.
"""
import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import Pipeline

TOLERANCE = 1e-5
ROWS, MICRO_BATCHES, STEPS = 10, 4, 3
MICRO_BATCH_ROWS = [3, 3, 2, 2]  # 10 rows in 4 micro-batches, one row apart in size
DROPOUT_BALANCE = {"gpipe": [5, 5], "1f1b": [5, 5], "zb-h1": [5, 5], "interleaved": [2, 3, 2, 3]}


def dropout_model() -> nn.Sequential:
    """Dropout layers of the same width on both stages: stages drawing alike would show at once."""
    nn.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 16), nn.Dropout(0.3),
                         nn.ReLU(), nn.Linear(16, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 5))


def batchnorm_model() -> nn.Sequential:
    nn.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 16), nn.BatchNorm1d(16),
                         nn.ReLU(), nn.Linear(16, 5))


def batches():
    generator = numpy.random.default_rng(2)
    return [(generator.standard_normal((ROWS, 6)).astype(numpy.float32), generator.integers(0, 5, ROWS))
            for _ in range(STEPS)]


def train_pipeline(pipe: Pipeline) -> tuple[list[float], dict]:
    optimizer, losses = nn.optim.SGD(pipe.parameters(), lr=0.1, momentum=0.9), []
    for x, y in batches():
        optimizer.zero_grad()
        losses.append(pipe.train_step(x if pipe.is_first else None, y if pipe.is_last else None,
                                      nn.CrossEntropyLoss()))
        optimizer.step()
    return losses, pipe.state_dict()


def train_sequential(model: nn.Sequential, per_micro_batch: bool) -> tuple[list[float], dict]:
    optimizer, loss_fn, losses = nn.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), nn.CrossEntropyLoss(), []
    for x, y in batches():
        optimizer.zero_grad()
        parts = numpy.split(numpy.arange(ROWS), numpy.cumsum(MICRO_BATCH_ROWS)[:-1]) if per_micro_batch else [
            numpy.arange(ROWS)]
        loss = 0.0
        for rows in parts:
            share = len(rows) / ROWS
            loss += share * loss_fn(model(x[rows]), y[rows])
            model.backward(loss_fn.backward() * numpy.float32(share), input_grad=False)
        losses.append(loss)
        optimizer.step()
    state = {name: p.data.copy() for name, p in model.named_parameters()}
    state.update({name: b.copy() for name, b in model.named_buffers()})
    return losses, state


def assert_matches(what: str, pipeline: tuple, reference: tuple) -> None:
    (losses, state), (expected_losses, expected_state) = pipeline, reference
    loss_error = max(abs(a - b) for a, b in zip(losses, expected_losses))
    state_error = max(float(numpy.abs(array - expected_state[name]).max()) for name, array in state.items())
    assert loss_error < TOLERANCE and state_error < TOLERANCE, (what, loss_error, state_error)
    print(f"LAYERS-OK rank={MPI.COMM_WORLD.rank} {what} loss_err={loss_error:.1e} state_err={state_error:.1e}",
          flush=True)


def check_dropout(schedule: str) -> None:
    pipe = Pipeline(dropout_model(), MICRO_BATCHES, schedule, balance=DROPOUT_BALANCE[schedule])
    trained = train_pipeline(pipe)  # before the reference: dropout_model() restarts the streams
    assert_matches(f"dropout schedule={schedule}", trained, train_sequential(dropout_model(), per_micro_batch=False))


def check_batchnorm_per_micro_batch() -> None:
    pipe = Pipeline(batchnorm_model(), MICRO_BATCHES, "1f1b", balance=[3, 4])
    assert_matches("batchnorm", train_pipeline(pipe), train_sequential(batchnorm_model(), per_micro_batch=True))


def main() -> None:
    for schedule in DROPOUT_BALANCE:
        check_dropout(schedule)
    check_batchnorm_per_micro_batch()


if __name__ == "__main__":
    main()
