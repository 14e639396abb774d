"""Data-parallel SGD-with-momentum on N ranks against one process training on the global batch.

Every rank builds its model from a different seed, so only DataParallel's broadcast can make
them agree. Rank 0 also trains a copy of its initial model on the whole global batch; after
the steps every rank's parameters must match that reference. Prints one line per
configuration on rank 0 and "rank R ok" on every rank.
"""
import warnings

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel

IN, HIDDEN, CLASSES = 12, 16, 4
PER_RANK, STEPS, LR, MOMENTUM = 8, 4, 0.1, 0.9
TOLERANCE = 1e-5
FLOAT16_TOLERANCE = 1e-3  # float16 keeps ~3.3 significant digits (relative error <= 2**-11) of each gradient


def build_model(seed: int) -> nn.Sequential:
    nn.manual_seed(seed)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                         nn.Linear(HIDDEN, CLASSES))


def global_batches(world_size: int, micro_batches: int):
    rng = numpy.random.default_rng(1234)
    total = world_size * micro_batches * PER_RANK
    for _ in range(STEPS):
        x = rng.standard_normal((total, IN)).astype(numpy.float32)
        y = rng.integers(0, CLASSES, total)
        yield x, y


def local_micro_batches(x, y, rank: int, world_size: int, micro_batches: int):
    """Rank r holds rows [r*K*B, (r+1)*K*B) of the global batch, split into K micro-batches."""
    per_rank = micro_batches * PER_RANK
    mine = slice(rank * per_rank, (rank + 1) * per_rank)
    xs, ys = x[mine], y[mine]
    return [(xs[k * PER_RANK:(k + 1) * PER_RANK], ys[k * PER_RANK:(k + 1) * PER_RANK]) for k in range(micro_batches)]


def train_data_parallel(dp: DataParallel, comm, micro_batches: int) -> None:
    optimizer = nn.optim.SGD(dp.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    for x, y in global_batches(comm.size, micro_batches):
        optimizer.zero_grad()
        parts = local_micro_batches(x, y, comm.rank, comm.size, micro_batches)
        for k, (xb, yb) in enumerate(parts):
            loss_fn(dp(xb), yb)
            dout = loss_fn.backward() / micro_batches
            if k < micro_batches - 1:
                with dp.no_sync():
                    dp.backward(dout)
            else:
                dp.backward(dout)
        optimizer.step()


def train_reference(model: nn.Sequential, world_size: int, micro_batches: int) -> None:
    optimizer = nn.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    loss_fn = nn.CrossEntropyLoss()
    for x, y in global_batches(world_size, micro_batches):
        optimizer.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()


def flat_parameters(model) -> numpy.ndarray:
    return numpy.concatenate([p.data.ravel() for p in model.parameters()])


def assert_same_on_all_ranks(world, values: numpy.ndarray, what: str) -> None:
    on_rank_0 = world.bcast(values, root=0)
    assert numpy.array_equal(values, on_rank_0), f"rank {world.rank}: {what} differ from rank 0's"


def check_configuration(world, micro_batches: int, bucket_cap_mb: float, compression, shared_memory=True) -> None:
    model = build_model(seed=100 + world.rank)
    reference = build_model(seed=100)
    dp = DataParallel(model, bucket_cap_mb=bucket_cap_mb, compression=compression, shared_memory=shared_memory)
    assert_same_on_all_ranks(world, flat_parameters(model), "parameters after the broadcast")
    assert numpy.array_equal(flat_parameters(model), flat_parameters(reference))
    train_data_parallel(dp, dp.comm, micro_batches)
    assert_same_on_all_ranks(world, flat_parameters(model), "parameters after training")
    if world.rank == 0:
        train_reference(reference, world.size, micro_batches)
        difference = float(numpy.abs(flat_parameters(model) - flat_parameters(reference)).max())
        moved = float(numpy.abs(flat_parameters(reference) - flat_parameters(build_model(seed=100))).max())
        tolerance = FLOAT16_TOLERANCE if compression else TOLERANCE
        print(f"ranks={world.size} micro_batches={micro_batches} buckets={len(dp.buckets)} "
              f"allreduce={dp.allreduce_kind.replace(' ', '_')} compression={compression} "
              f"max_abs_diff={difference:.3e} moved={moved:.3e}", flush=True)
        assert difference < tolerance, f"max abs difference {difference} exceeds {tolerance}"
        assert moved > 100 * TOLERANCE, "training barely moved the parameters; the comparison would be vacuous"
    if compression == "float16":
        assert dp.last_sync_stats.bytes * 2 == sum(b.nbytes for b in dp.buckets)


def check_buffers_broadcast(world) -> None:
    nn.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.Linear(HIDDEN, CLASSES))
    model[1].running_mean[...] = world.rank + 1.0
    DataParallel(model)
    assert (model[1].running_mean == 1.0).all(), model[1].running_mean


def check_input_gradient_is_this_ranks_own(world) -> None:
    """backward(input_grad=True) returns the gradient of this rank's loss, not one divided by the ranks."""
    model = build_model(seed=7)
    plain = build_model(seed=7)
    dp = DataParallel(model)
    x = numpy.random.default_rng(world.rank).standard_normal((PER_RANK, IN)).astype(numpy.float32)
    dout = numpy.random.default_rng(50 + world.rank).standard_normal((PER_RANK, CLASSES)).astype(numpy.float32)
    ours = dp.backward(dout, dp.forward(x)[1], input_grad=True)
    expected = plain.backward(dout, plain.forward(x)[1])
    numpy.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


def check_sub_communicator(world) -> None:
    """DataParallel over pairs of ranks (a Split communicator) averages over the pair only."""
    pairs = world.Split(world.rank // 2, world.rank)
    model, plain = build_model(seed=3), build_model(seed=3)
    dp = DataParallel(model, comm=pairs)
    assert dp.allreduce_kind == ("shared memory" if pairs.size > 1 else "mpi")
    x = numpy.random.default_rng(world.rank).standard_normal((PER_RANK, IN)).astype(numpy.float32)
    dout = numpy.ones((PER_RANK, CLASSES), dtype=numpy.float32)
    dp.backward(dout, dp.forward(x)[1])
    plain.backward(dout, plain.forward(x)[1], input_grad=False)
    for p, reference in zip(model.parameters(), plain.parameters()):
        expected = pairs.allreduce(reference.grad) / pairs.size
        numpy.testing.assert_allclose(p.grad, expected, rtol=1e-5, atol=1e-6)
    pairs.Free()


def check_short_shared_memory_falls_back_to_mpi(world) -> None:
    """One rank short of /dev/shm room: every rank uses MPI's allreduce, rank 0 warns with the sizes."""
    from mpiprop.distributed.transport import shared_memory_room

    measured = shared_memory_room.free_shared_memory_bytes
    shared_memory_room.free_shared_memory_bytes = lambda: 2**10 if world.rank == world.size - 1 else None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dp = DataParallel(build_model(seed=5))
    finally:
        shared_memory_room.free_shared_memory_bytes = measured
    assert dp.allreduce_kind == "mpi", dp.allreduce_kind
    messages = [str(warning.message) for warning in caught]
    if world.rank == 0:
        assert len(messages) == 1 and f"on rank {world.size - 1} has 0 MiB free" in messages[0], messages
        assert "--shm-size" in messages[0], messages
    else:
        assert messages == [], messages


def main() -> None:
    world = MPI.COMM_WORLD
    check_buffers_broadcast(world)
    check_input_gradient_is_this_ranks_own(world)
    check_sub_communicator(world)
    check_short_shared_memory_falls_back_to_mpi(world)
    check_configuration(world, micro_batches=1, bucket_cap_mb=4.0, compression=None)
    check_configuration(world, micro_batches=1, bucket_cap_mb=0.0001, compression=None)
    check_configuration(world, micro_batches=3, bucket_cap_mb=0.0001, compression=None)
    check_configuration(world, micro_batches=3, bucket_cap_mb=0.0001, compression=None, shared_memory=False)
    check_configuration(world, micro_batches=1, bucket_cap_mb=0.0001, compression="float16")
    print(f"rank {world.rank} ok", flush=True)


if __name__ == "__main__":
    main()
