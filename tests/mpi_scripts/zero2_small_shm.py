"""ZeRO-2 on a node whose /dev/shm has no room for the ring of shared gradient slots.

    mpiexec -n N python zero2_small_shm.py

Every rank reads 1 MiB free in /dev/shm (patched), less than the slots for buckets of 320 kB need
(three slots per rank): DataParallel must warn on rank 0 alone, naming the free space, and
reduce-scatter with MPI; the averaged gradients of each rank's own parameters must equal the mean of
every rank's gradients, computed by each rank from all ranks' inputs.
Prints "rank R ok kind=mpi-reduce-scatter warnings=W" on every rank.
"""
import warnings

import numpy
from mpi4py import MPI

import mpiprop.distributed.transport.shared_memory_room as windows
import mpiprop.network as nn
from mpiprop.distributed import DataParallel

WORLD = MPI.COMM_WORLD
ROWS = 2


def build_model() -> nn.Sequential:
    nn.manual_seed(0)
    return nn.Sequential(*[nn.Linear(200, 200) for _ in range(4)]).to(dtype=numpy.float64)


def inputs(rank: int) -> numpy.ndarray:
    return numpy.random.default_rng(rank).standard_normal((ROWS, 200))


def main() -> None:
    windows.free_shared_memory_bytes = lambda: 2**20
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dp = DataParallel(build_model(), bucket_cap_mb=0.1, shard_optimizer_state=2)
    messages = [str(warning.message) for warning in caught if "/dev/shm" in str(warning.message)]
    if WORLD.rank == 0:
        assert len(messages) == 1 and "shared gradient slots" in messages[0] and "MPI instead" in messages[0], messages
    else:
        assert not messages, messages
    dout = numpy.ones((ROWS, 200))
    dp.backward(dout, dp.forward(inputs(WORLD.rank))[1])
    plain = build_model()
    for rank in range(WORLD.size):
        plain.backward(dout / WORLD.size, plain.forward(inputs(rank))[1], input_grad=False)
    for p, expected in zip(dp.parameters(), plain.parameters()):
        if dp.owner_of[id(p)] == WORLD.rank:
            numpy.testing.assert_allclose(p.grad, expected.grad, rtol=1e-12, atol=1e-12)
    print(f"rank {WORLD.rank} ok kind={dp.allreduce_kind.replace(' ', '-')} warnings={len(messages)}", flush=True)


if __name__ == "__main__":
    main()
