"""SharedMemoryBucketAllreduce against MPI's Allreduce, under mpiexec on one node.

Buffers of awkward sizes and two dtypes; every rank announces them in its own order and
rewrites them right after each round, so a rank that read or wrote a peer's memory at the
wrong time would show up as a wrong or unequal sum. Small pieces (CHUNK_BYTES patched)
exercise the piece-by-piece loop. Prints "rank R ok" on every rank.
"""
import numpy
from mpi4py import MPI

from mpiprop.distributed import Communicator
from mpiprop.distributed.data_parallel import bucket_allreduce_shared
from mpiprop.distributed.data_parallel.bucket_allreduce_shared import SharedMemoryBucketAllreduce, shared_memory_possible

SIZES = [1, 7, 1000, 100_003]
DTYPES = [numpy.float32, numpy.float64, numpy.float32, numpy.float32]
ROUNDS = 20


def fill(buffers, rank: int, round_number: int) -> list[numpy.ndarray]:
    """This rank's values for a round, written into `buffers`; returns copies."""
    rng = numpy.random.default_rng(1000 * round_number + rank)
    for buffer in buffers:
        buffer[...] = rng.standard_normal(buffer.size)
    return [buffer.copy() for buffer in buffers]


def check_round(shared: SharedMemoryBucketAllreduce, comm: Communicator, round_number: int) -> None:
    values = fill(shared.buffers, comm.rank, round_number)
    expected = [comm.allreduce(value) for value in values]
    shared.start()
    order = numpy.random.default_rng(round_number * 7 + comm.rank).permutation(len(SIZES))
    for index in order:
        shared.launch(int(index))
        shared.progress()
    sent = shared.finish()
    assert sent == sum(buffer.nbytes for buffer in shared.buffers)
    for index, (buffer, reference) in enumerate(zip(shared.buffers, expected)):
        numpy.testing.assert_allclose(buffer, reference, rtol=1e-5, atol=1e-5 * comm.size,
                                      err_msg=f"buffer {index} round {round_number} rank {comm.rank}")
        on_rank_0 = comm.bcast_object(buffer.copy() if comm.rank == 0 else None)
        assert numpy.array_equal(buffer, on_rank_0), f"rank {comm.rank}: buffer {index} differs from rank 0's"


def main() -> None:
    comm = Communicator(MPI.COMM_WORLD)
    assert shared_memory_possible(comm, DTYPES, on_cpu=True)
    assert not shared_memory_possible(comm, DTYPES, on_cpu=False)
    assert not shared_memory_possible(comm, [numpy.int64], on_cpu=True)
    shared = SharedMemoryBucketAllreduce(SIZES, DTYPES, comm)
    assert [buffer.dtype for buffer in shared.buffers] == [numpy.dtype(d) for d in DTYPES]
    assert all(buffer.ctypes.data % bucket_allreduce_shared.ALIGNMENT == 0 for buffer in shared.buffers)
    for round_number in range(ROUNDS):
        if round_number == ROUNDS // 2:
            bucket_allreduce_shared.CHUNK_BYTES = 64
        check_round(shared, comm, round_number)
    print(f"rank {comm.rank} ok", flush=True)


if __name__ == "__main__":
    main()
