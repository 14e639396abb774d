"""HierarchicalBucketAllreduce against MPI's Allreduce, under mpiexec with MPIPROP_PRETEND_NODES set.

Run e.g. 4 ranks as 2 pretend nodes of 2. Buffers of awkward sizes and two dtypes, rewritten
right after each round, so a rank that read or wrote a peer's memory at the wrong time would
show up as a wrong or unequal sum; small pieces (CHUNK_BYTES patched) exercise the
piece-by-piece loop. Every rank's sums must be bit-identical to rank 0's and within float
rounding of MPI's allreduce. Then DataParallel must choose it and average like MPI's
allreduce. Prints "rank R ok" on every rank.
"""
import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import Communicator, DataParallel
from mpiprop.distributed.data_parallel import bucket_allreduce_shared
from mpiprop.distributed.data_parallel.gradient_sync import shared_memory_bucket_allreduce

SIZES = [1, 7, 1000, 100_003]
DTYPES = [numpy.float32, numpy.float64, numpy.float32, numpy.float32]
ROUNDS = 12


def fill(buffers, rank: int, round_number: int) -> list[numpy.ndarray]:
    """This rank's values for a round, written into `buffers`; returns copies."""
    rng = numpy.random.default_rng(1000 * round_number + rank)
    for buffer in buffers:
        buffer[...] = rng.standard_normal(buffer.size)
    return [buffer.copy() for buffer in buffers]


def assert_same_as_rank_0(comm: Communicator, array: numpy.ndarray, what: str) -> None:
    on_rank_0 = comm.bcast_object(array.copy() if comm.rank == 0 else None)
    assert numpy.array_equal(array, on_rank_0), f"rank {comm.rank}: {what} differs from rank 0's"


def check_round(allreduce, comm: Communicator, round_number: int) -> None:
    values = fill(allreduce.buffers, comm.rank, round_number)
    expected = [comm.allreduce(value) for value in values]
    allreduce.start()
    for index in range(len(SIZES)):
        allreduce.launch(index)
        allreduce.progress()
    assert allreduce.finish() == sum(buffer.nbytes for buffer in allreduce.buffers)
    for index, (buffer, reference) in enumerate(zip(allreduce.buffers, expected)):
        numpy.testing.assert_allclose(buffer, reference, rtol=1e-5, atol=1e-5 * comm.size,
                                      err_msg=f"buffer {index} round {round_number} rank {comm.rank}")
        assert_same_as_rank_0(comm, buffer, f"buffer {index} in round {round_number}")


def check_data_parallel(comm: Communicator) -> None:
    """DataParallel chooses the hierarchical sum and averages the gradients as MPI's allreduce does."""
    def gradients(shared_memory: bool) -> numpy.ndarray:
        nn.manual_seed(0)
        dp = DataParallel(nn.Sequential(nn.Linear(6, 40), nn.Tanh(), nn.Linear(40, 3)), bucket_cap_mb=0.0005,
                          shared_memory=shared_memory)
        assert dp.allreduce_kind == ("hierarchical" if shared_memory else "mpi"), dp.allreduce_kind
        x = numpy.random.default_rng(comm.rank).standard_normal((5, 6)).astype(numpy.float32)
        dp.backward(numpy.ones((5, 3), dtype=numpy.float32), dp.forward(x)[1])
        return numpy.concatenate([p.grad.ravel() for p in dp.parameters()])

    hierarchical, mpi = gradients(True), gradients(False)
    numpy.testing.assert_allclose(hierarchical, mpi, rtol=1e-5, atol=1e-6)
    assert_same_as_rank_0(comm, hierarchical, "DataParallel's gradients")


def main() -> None:
    comm = Communicator(MPI.COMM_WORLD)
    allreduce = shared_memory_bucket_allreduce(SIZES, DTYPES, comm, on_cpu=True)
    assert allreduce.kind == "hierarchical", allreduce.kind
    assert (allreduce.leaders is not None) == (allreduce.comm.rank == 0)
    for round_number in range(ROUNDS):
        if round_number == ROUNDS // 2:
            bucket_allreduce_shared.CHUNK_BYTES = 64
        check_round(allreduce, comm, round_number)
    check_data_parallel(comm)
    print(f"rank {comm.rank} ok", flush=True)


if __name__ == "__main__":
    main()
