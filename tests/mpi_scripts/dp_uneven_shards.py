"""Data parallel over shards of unequal sizes (10 rows on 3 ranks: 4, 3, 3) against one process on the global batch.

Each rank's loss is the mean over its shard; after the steps every rank's parameters must
equal those of one process training on the whole batch's mean loss; so must gradients
accumulated under no_sync() over micro-batches cut unevenly across the ranks, and parameters
trained on shards whose sizes change from step to step on some ranks only. Prints
"UNEVEN-OK rank=R what" per check.
"""
import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel

GLOBAL_ROWS, STEPS, TOLERANCE = 10, 3, 1e-5


def build_model() -> nn.Sequential:
    nn.manual_seed(21)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def batches():
    generator = numpy.random.default_rng(3)
    return [(generator.standard_normal((GLOBAL_ROWS, 4)).astype(numpy.float32), generator.integers(0, 3, GLOBAL_ROWS))
            for _ in range(STEPS)]


def my_rows(rank: int, ranks: int) -> numpy.ndarray:
    """Shards as numpy.array_split cuts them: the first ones one row longer."""
    return numpy.array_split(numpy.arange(GLOBAL_ROWS), ranks)[rank]


def train(model, rows=None, dp=None) -> None:
    optimizer, loss_fn = nn.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), nn.CrossEntropyLoss()
    for x, y in batches():
        optimizer.zero_grad()
        if dp is None:
            loss_fn(model(x), y)
            model.backward(loss_fn.backward(), input_grad=False)
        else:
            loss_fn(dp(x[rows]), y[rows])
            dp.backward(loss_fn.backward())
        optimizer.step()


def check_uneven_shards_give_the_global_batch_gradient(world) -> None:
    model, reference = build_model(), build_model()
    dp = DataParallel(model)
    rows = my_rows(world.rank, world.size)
    train(model, rows, dp)
    train(reference)
    error = max(float(numpy.abs(p.data - q.data).max()) for p, q in zip(model.parameters(), reference.parameters()))
    moved = max(float(numpy.abs(p.data - q.data).max()) for p, q in zip(reference.parameters(),
                                                                          build_model().parameters()))
    assert error < TOLERANCE < moved / 100, (world.rank, error, moved)
    print(f"UNEVEN-OK rank={world.rank} rows={len(rows)} max_abs_diff={error:.1e} moved={moved:.1e}", flush=True)


def check_accumulated_uneven_micro_batches_give_the_global_batch_gradient(world) -> None:
    """Two micro-batches of 5 rows each over all ranks (2, 2, 1 on 3 ranks), one allreduce: the mean over 10 rows."""
    model, reference, loss_fn = build_model(), build_model(), nn.CrossEntropyLoss()
    dp = DataParallel(model)
    x, y = batches()[0]
    for half, rows in enumerate([numpy.arange(5), numpy.arange(5, 10)]):
        mine = numpy.array_split(rows, world.size)[world.rank]
        loss_fn(dp(x[mine]), y[mine])
        if half == 0:
            with dp.no_sync():
                dp.backward(loss_fn.backward() / 2)
        else:
            dp.backward(loss_fn.backward() / 2)
    loss_fn(reference(x), y)
    reference.backward(loss_fn.backward(), input_grad=False)
    error = max(float(numpy.abs(p.grad - q.grad).max()) for p, q in zip(model.parameters(), reference.parameters()))
    assert error < TOLERANCE, (world.rank, error)
    print(f"UNEVEN-OK rank={world.rank} no_sync max_abs_diff={error:.1e}", flush=True)


def changing_shards(rank: int, ranks: int) -> list[numpy.ndarray]:
    """Each step's rows of `rank`: its shards of 10, 10, 9, 10 and 8 rows, then rank 0 and the last rank trading a row
    (the same total), then the first shards again: some ranks' sizes change while others' stay."""
    cuts = [numpy.array_split(numpy.arange(rows), ranks) for rows in (10, 10, 9, 10, 8)]
    traded = [shard.copy() for shard in cuts[0]]
    traded[-1], traded[0] = numpy.append(traded[-1], traded[0][-1]), traded[0][:-1]
    return [cut[rank] for cut in cuts + [traded, cuts[0]]]


def check_shard_sizes_changing_on_some_ranks_give_the_global_batch_gradient(world, shared_memory: bool) -> None:
    model, reference = build_model(), build_model()
    dp = DataParallel(model, shared_memory=shared_memory)
    generator = numpy.random.default_rng(5)
    steps = [changing_shards(rank, world.size) for rank in range(world.size)]
    loss_fn = nn.CrossEntropyLoss()
    optimizers = [nn.optim.SGD(m.parameters(), lr=0.5, momentum=0.9) for m in (model, reference)]
    for step in range(len(steps[0])):
        x = generator.standard_normal((GLOBAL_ROWS, 4)).astype(numpy.float32)
        y = generator.integers(0, 3, GLOBAL_ROWS)
        every_rank = numpy.concatenate([shards[step] for shards in steps])
        mine = steps[world.rank][step]
        for optimizer in optimizers:
            optimizer.zero_grad()
        loss_fn(dp(x[mine]), y[mine])
        dp.backward(loss_fn.backward())
        loss_fn(reference(x[every_rank]), y[every_rank])
        reference.backward(loss_fn.backward(), input_grad=False)
        error = max(float(numpy.abs(p.grad - q.grad).max()) for p, q in zip(model.parameters(), reference.parameters()))
        assert error < TOLERANCE, (world.rank, step, len(mine), error)
        for optimizer in optimizers:
            optimizer.step()
    print(f"UNEVEN-OK rank={world.rank} changing sizes over {dp.allreduce_kind}", flush=True)


def main() -> None:
    world = MPI.COMM_WORLD
    check_uneven_shards_give_the_global_batch_gradient(world)
    check_accumulated_uneven_micro_batches_give_the_global_batch_gradient(world)
    for shared_memory in (True, False):
        check_shard_sizes_changing_on_some_ranks_give_the_global_batch_gradient(world, shared_memory)


if __name__ == "__main__":
    main()
