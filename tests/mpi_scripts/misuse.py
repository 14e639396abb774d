"""Misuse that must end in an error: `model.backward` on a model DataParallel wraps ("model_backward"),
ZeRO with an optimizer not made by `dp.optimizer` ("zero_plain_optimizer"), and a collective call made on
one rank only ("evaluate_on_one_rank", which prints `rank R reached T` first). Prints
`rank R after S s ERRORTYPE: MESSAGE` (S from the start), or `rank R no error: ...`."""
import sys
import time

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel

RANK = MPI.COMM_WORLD.rank


def data(seed: int, rows: int = 8):
    generator = numpy.random.default_rng(seed)
    return (generator.standard_normal((rows, 5)).astype(numpy.float32),
            generator.integers(0, 3, rows).astype(numpy.int64))


def model() -> nn.Sequential:
    nn.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


def weights_apart(dp: DataParallel) -> float:
    weights = numpy.concatenate([numpy.ravel(p.data) for p in dp.parameters()])
    everyone = MPI.COMM_WORLD.allgather(weights)
    return float(numpy.max(numpy.abs(everyone[0] - everyone[1])))


def model_backward() -> None:
    wrapped = model()
    dp = DataParallel(wrapped)
    optimizer = dp.optimizer(nn.optim.SGD, lr=0.5)
    loss_fn = nn.CrossEntropyLoss()
    for step in range(3):
        x, y = data(RANK * 100 + step)
        optimizer.zero_grad()
        loss_fn(dp(x), y)
        wrapped.backward(loss_fn.backward())
        optimizer.step()
    print(f"rank {RANK} no error: weights differ by {weights_apart(dp):.3g}", flush=True)


def zero_plain_optimizer() -> None:
    dp = DataParallel(model(), shard_optimizer_state=1)
    optimizer = nn.optim.Adam(dp.parameters(), lr=0.01)
    for step in range(3):
        x, y = data(RANK * 100 + step)
        optimizer.zero_grad()
        dp.train_step(x, y, nn.CrossEntropyLoss())
        optimizer.step()
    print(f"rank {RANK} no error: every rank holds {len(optimizer.state)} states", flush=True)


def evaluate_on_one_rank() -> None:
    dp = DataParallel(model())
    trainer = nn.Trainer(dp, nn.CrossEntropyLoss(), dp.optimizer(nn.optim.SGD, lr=0.1), quiet=True)
    print(f"rank {RANK} reached {time.time():.3f}", flush=True)
    if RANK == 0:
        x, y = data(0, 16)
        print(f"rank {RANK} evaluated {trainer.evaluate(nn.DataLoader(nn.ArrayDataset(x, y), 8))}", flush=True)


def main() -> None:
    MPI.COMM_WORLD.Barrier()
    started = time.time()
    try:
        globals()[sys.argv[1]]()
    except (RuntimeError, ValueError) as error:
        print(f"rank {RANK} after {time.time() - started:.2f} s {type(error).__name__}: {error}", flush=True)


if __name__ == "__main__":
    main()
