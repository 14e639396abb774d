"""Recompute inside a pipeline: parameter names, training and checkpoints as in the single-process model.

    mpiexec -n 2 python pipe_recompute.py

The model wraps layers 2..4 and 6..7 in Recompute, so its elements and its layer numbers
differ. On 2 stages the parameters must carry the single-process names, the consolidated
state must load into the plain model, a state from the plain model must load back, and
3 SGD steps must equal the plain model's on the same batch (float64, 1e-10).
Prints "RECOMPUTE-OK rank=R" on every rank.
"""
import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import Pipeline

TOLERANCE = 1e-10


def plain_model():
    nn.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(),
                         nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype=numpy.float64)


def wrapped_model():
    model = plain_model()
    return nn.Sequential(*model[:2], nn.Recompute(model[2:5]), model[5], nn.Recompute(model[6:8]), model[8])


def main():
    world = MPI.COMM_WORLD
    plain, pipe = plain_model(), Pipeline(wrapped_model(), micro_batches=2, stages=2)
    names = sorted(name for part in pipe.stage_allgather([name for name, _ in pipe.named_parameters()])
                   for name in part)
    assert names == sorted(name for name, _ in plain.named_parameters()), names
    rng = numpy.random.default_rng(0)
    pipe_optimizer = nn.optim.SGD(pipe.parameters(), lr=0.1, momentum=0.9)
    plain_optimizer = nn.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        x, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
        pipe_optimizer.zero_grad(), plain_optimizer.zero_grad()
        pipe.train_step(x, y, nn.CrossEntropyLoss())
        loss_fn = nn.CrossEntropyLoss()
        loss_fn(plain(x), y)
        plain.backward(loss_fn.backward())
        pipe_optimizer.step(), plain_optimizer.step()
    expected = plain.state_dict()
    for name, p in pipe.named_parameters():
        assert numpy.abs(p.data - expected[name]).max() < TOLERANCE, name
    whole = pipe.consolidated_state_dict()
    if whole is not None:
        reloaded = plain_model()
        reloaded.load_state_dict(whole)
    fresh = Pipeline(wrapped_model(), micro_batches=2, stages=2)
    fresh.load_state_dict(expected)
    for name, p in fresh.named_parameters():
        assert numpy.array_equal(p.data, expected[name]), name
    print(f"RECOMPUTE-OK rank={world.rank}", flush=True)


if __name__ == "__main__":
    main()
