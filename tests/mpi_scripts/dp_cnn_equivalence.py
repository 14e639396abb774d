"""Data-parallel training of the CNNs in float64 on N ranks against one process training on the global batch.

Every rank builds its model from a different seed, so only DataParallel's broadcast can make them
agree. Rank 0 also trains a copy of its initial model on the whole global batch; after the steps
every rank's parameters must match that reference. Prints one line per model on rank 0 and
"rank R ok" on every rank.
"""
import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel
from mpiprop.network.models.cnn import digits_cnn, mnist1d_cnn

PER_RANK, STEPS, LR, MOMENTUM = 6, 4, 0.05, 0.9
TOLERANCE = 1e-12
MODELS = {
    "mnist1d_cnn": (lambda: mnist1d_cnn(dtype=numpy.float64), (1, 40)),
    "digits_cnn": (lambda: digits_cnn(batch_norm=False, dtype=numpy.float64), (1, 8, 8)),
}


def build(name: str, seed: int) -> nn.Sequential:
    nn.manual_seed(seed)
    return MODELS[name][0]()


def global_batches(name: str, world_size: int):
    rng = numpy.random.default_rng(1234)
    for _ in range(STEPS):
        total = world_size * PER_RANK
        yield rng.standard_normal((total,) + MODELS[name][1]), rng.integers(0, 10, total)


def train(model, name: str, world_size: int, rank: int | None) -> None:
    """SGD with momentum on the global batches, or (with `rank`) on this rank's rows of them."""
    optimizer = nn.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    for x, y in global_batches(name, world_size):
        if rank is not None:
            x, y = x[rank * PER_RANK:(rank + 1) * PER_RANK], y[rank * PER_RANK:(rank + 1) * PER_RANK]
        optimizer.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()


def flat(model) -> numpy.ndarray:
    return numpy.concatenate([p.data.ravel() for p in model.parameters()])


def check(world, name: str) -> None:
    model, reference = build(name, seed=100 + world.rank), build(name, seed=100)
    dp = DataParallel(model)
    assert numpy.array_equal(flat(model), flat(reference)), "the broadcast did not give rank 0's weights"
    train(dp, name, world.size, world.rank)
    assert numpy.array_equal(flat(model), world.bcast(flat(model), root=0)), f"rank {world.rank} differs from rank 0"
    if world.rank == 0:
        train(reference, name, world.size, None)
        difference = float(numpy.abs(flat(model) - flat(reference)).max())
        moved = float(numpy.abs(flat(reference) - flat(build(name, seed=100))).max())
        print(f"{name} ranks={world.size} max_abs_diff={difference:.3e} moved={moved:.3e}", flush=True)
        assert difference < TOLERANCE, f"{name}: max abs difference {difference} exceeds {TOLERANCE}"
        assert moved > 1e-3, f"{name}: training barely moved the parameters; the comparison would be vacuous"


def main() -> None:
    world = MPI.COMM_WORLD
    for name in MODELS:
        check(world, name)
    print(f"rank {world.rank} ok", flush=True)


if __name__ == "__main__":
    main()
