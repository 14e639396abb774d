"""DataParallel on a node whose /dev/shm is smaller than its shared gradient buckets would need.

Run under `mpiexec -n 2` with a 64 MB /dev/shm (Docker's default). The model's gradients
take 40 MB per rank, so a shared window would not fit: MPICH would hand it out and the
ranks would die of SIGBUS at the first write. DataParallel must warn on rank 0 and sum
with MPI's allreduce instead, and the gradients must be the ranks' mean.
Prints "rank R ok" on every rank.
"""
import warnings

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel


def build_model() -> nn.Sequential:
    nn.manual_seed(0)
    return nn.Sequential(nn.Linear(1000, 2000), nn.ReLU(), nn.Linear(2000, 2000), nn.ReLU(), nn.Linear(2000, 2000))


def main() -> None:
    world = MPI.COMM_WORLD
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dp = DataParallel(build_model())
    assert dp.allreduce_kind == "mpi", dp.allreduce_kind
    messages = [str(warning.message) for warning in caught]
    if world.rank == 0:
        assert len(messages) == 1 and "/dev/shm on rank" in messages[0] and "--shm-size" in messages[0], messages
    x = numpy.random.default_rng(world.rank).standard_normal((4, 1000)).astype(numpy.float32)
    dout = numpy.ones((4, 2000), dtype=numpy.float32)
    dp.backward(dout, dp.forward(x)[1])
    plain = build_model()
    plain.backward(dout, plain.forward(x)[1], input_grad=False)
    expected = world.allreduce(plain[0].weight.grad) / world.size
    numpy.testing.assert_allclose(dp.module[0].weight.grad, expected, rtol=1e-5, atol=1e-5)
    print(f"rank {world.rank} ok", flush=True)


if __name__ == "__main__":
    main()
