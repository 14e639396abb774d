"""DataParallel with dropout equals one process on the global batch, under mpiexec.

    mpiexec -n N python dp_dropout.py

Float64; two Dropout layers; shards of unequal rows; every rank seeds alike. One process's model is built in the
same process after the same seed and trained step by step beside the data-parallel one (each model draws from
streams of its own). After each step the parameters must agree within TOLERANCE, and the dropout must have dropped
something. Prints "DROPOUT-OK rank=R".
"""
import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel

TOLERANCE = 1e-10
ROWS, STEPS = 11, 3
WORLD = MPI.COMM_WORLD


def build_model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 16), nn.Tanh(),
                         nn.Dropout(0.3), nn.Linear(16, 3)).to(dtype=numpy.float64)


def main() -> None:
    nn.manual_seed(9)
    dp = DataParallel(build_model())
    nn.manual_seed(9)
    reference = build_model()
    strategies = [dp, nn.LocalStrategy(reference)]
    optimizers = [nn.optim.SGD(s.parameters(), lr=0.3) for s in strategies]
    generator = numpy.random.default_rng(4)
    mine = numpy.array_split(numpy.arange(ROWS), WORLD.size)[WORLD.rank]
    for step in range(STEPS):
        x, y = generator.standard_normal((ROWS, 5)), generator.integers(0, 3, ROWS)
        for strategy, optimizer, rows in zip(strategies, optimizers, (mine, numpy.arange(ROWS))):
            optimizer.zero_grad()
            strategy.train_step(x[rows], y[rows], nn.CrossEntropyLoss())
            optimizer.step()
        error = max(float(numpy.abs(p.data - q.data).max()) for p, q in zip(dp.parameters(), reference.parameters()))
        assert error < TOLERANCE, (WORLD.rank, step, error)
    dropped = nn.LocalStrategy(reference).train_step(x, y, nn.CrossEntropyLoss()) != \
        nn.LocalStrategy(reference.eval()).train_step(x, y, nn.CrossEntropyLoss())
    assert dropped, "dropout dropped nothing"
    print(f"DROPOUT-OK rank={WORLD.rank}", flush=True)


if __name__ == "__main__":
    main()
