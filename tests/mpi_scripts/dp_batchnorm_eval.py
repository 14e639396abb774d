"""After data-parallel training with BatchNorm, every rank evaluates with rank 0's running statistics.

PyTorch DDP broadcasts rank 0's buffers at each forward; DataParallel does so before every
training forward and in `eval()`. The reference, in one process on every rank, replays
that: each step starts every shard from rank 0's buffers, each shard's forward updates them
on its own, the gradients are averaged, and rank 0's updated buffers are kept. Every rank's
evaluation output must equal the reference's and be bit-identical across ranks. A grid of
1-stage pipelines must leave replica 0's buffers on every replica after a step.
Prints "BN-OK rank=R what" per check.
"""
import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel, Pipeline

ROWS_PER_RANK, STEPS, TOLERANCE = 6, 4, 1e-5


def build_model() -> nn.Sequential:
    nn.manual_seed(11)
    return nn.Sequential(nn.Linear(5, 12), nn.BatchNorm1d(12), nn.Tanh(), nn.Linear(12, 3))


def global_batches(ranks: int):
    generator = numpy.random.default_rng(5)
    for step in range(STEPS):
        x = generator.standard_normal((ranks * ROWS_PER_RANK, 5)).astype(numpy.float32)
        x += numpy.arange(ranks).repeat(ROWS_PER_RANK)[:, None].astype(numpy.float32)  # shards differ in mean
        yield x, generator.integers(0, 3, ranks * ROWS_PER_RANK)


def shard(array, rank: int):
    return array[rank * ROWS_PER_RANK:(rank + 1) * ROWS_PER_RANK]


def train_data_parallel(world) -> DataParallel:
    dp = DataParallel(build_model())
    optimizer, loss_fn = nn.optim.SGD(dp.parameters(), lr=0.1), nn.CrossEntropyLoss()
    for x, y in global_batches(world.size):
        optimizer.zero_grad()
        loss_fn(dp(shard(x, world.rank)), shard(y, world.rank))
        dp.backward(loss_fn.backward())
        optimizer.step()
    return dp


def train_reference(ranks: int) -> nn.Sequential:
    model = build_model()
    optimizer, loss_fn = nn.optim.SGD(model.parameters(), lr=0.1), nn.CrossEntropyLoss()
    buffers = [buffer for _, buffer in model.named_buffers()]
    for x, y in global_batches(ranks):
        optimizer.zero_grad()
        start = [buffer.copy() for buffer in buffers]
        for rank in reversed(range(ranks)):  # rank 0 last: its updated buffers stay
            for buffer, value in zip(buffers, start):
                buffer[...] = value
            loss_fn(model(shard(x, rank)), shard(y, rank))
            model.backward(loss_fn.backward() / numpy.float32(ranks), input_grad=False)
        optimizer.step()
    return model


def check_data_parallel_evaluation(world) -> None:
    dp = train_data_parallel(world)
    x_test = numpy.random.default_rng(9).standard_normal((7, 5)).astype(numpy.float32)
    output = dp.eval().module.forward(x_test)[0]
    expected = train_reference(world.size).eval().forward(x_test)[0]
    error = float(numpy.abs(output - expected).max())
    assert error < TOLERANCE, f"rank {world.rank}: evaluation output {error} off the reference"
    assert numpy.array_equal(output, world.bcast(output, root=0)), f"rank {world.rank} evaluates unlike rank 0"
    print(f"BN-OK rank={world.rank} data_parallel eval_err={error:.1e}", flush=True)


def check_grid_buffers(world) -> None:
    pipe = Pipeline(build_model(), 2, "1f1b", stages=1)
    replica, _ = pipe.data_shard
    x, y = next(global_batches(world.size))
    pipe.train_step(shard(x, replica), shard(y, replica), nn.CrossEntropyLoss())
    replica_0 = {name: world.bcast(buffer.copy(), root=0) for name, buffer in pipe.named_buffers()}
    for name, buffer in pipe.named_buffers():
        assert numpy.array_equal(buffer, replica_0[name]), f"rank {world.rank}: {name} is not replica 0's"
    print(f"BN-OK rank={world.rank} grid", flush=True)


def main() -> None:
    world = MPI.COMM_WORLD
    check_data_parallel_evaluation(world)
    check_grid_buffers(world)


if __name__ == "__main__":
    main()
