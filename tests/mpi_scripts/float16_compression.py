"""Float16 gradient compression keeps large and tiny gradients, under mpiexec; prints "rank R ok".

Each bucket mixes values float16 cannot hold as they are (3e5 overflows to inf, 1e-8 flushes to
zero) with ordinary ones; the compressed sum must match the float64 sum to float16's precision,
be identical on every rank, and keep a NaN that one rank sends.
"""
import numpy

from mpiprop.distributed import Communicator
from mpiprop.distributed.data_parallel.bucket_allreduce_mpi import MpiBucketAllreduce

FLOAT16_RELATIVE = 2.0 ** -10  # a float16 rounding of each value and of the sum


def rank_values(rank: int) -> list[numpy.ndarray]:
    rng = numpy.random.default_rng(rank)
    large = (3e5 * (1 + rng.random(100))).astype(numpy.float32)
    tiny = (1e-8 * (1 + rng.random(100))).astype(numpy.float32)
    ordinary = rng.standard_normal(100).astype(numpy.float32)
    return [large, tiny, ordinary]


def main() -> None:
    comm = Communicator()
    buffers = [value.copy() for value in rank_values(comm.rank)]
    reducer = MpiBucketAllreduce(buffers, comm, compression="float16")
    reducer.start()
    for index in range(len(buffers)):
        reducer.launch(index)
    reducer.finish()
    for index, buffer in enumerate(buffers):
        expected = sum(rank_values(r)[index].astype(numpy.float64) for r in range(comm.size))
        assert numpy.isfinite(buffer).all(), f"bucket {index} overflowed: {buffer[:3]}"
        magnitude = sum(numpy.abs(rank_values(r)[index].astype(numpy.float64)) for r in range(comm.size))
        numpy.testing.assert_allclose(buffer, expected, rtol=0, atol=comm.size * FLOAT16_RELATIVE * magnitude.max(),
                                      err_msg=f"bucket {index} rank {comm.rank}")
        if index < 2:  # one sign throughout: each sum to float16's relative precision
            numpy.testing.assert_allclose(buffer, expected, rtol=comm.size * FLOAT16_RELATIVE)
        everyone = comm.mpi_comm.allgather(buffer.tobytes())
        assert all(other == everyone[0] for other in everyone), f"bucket {index} differs between ranks"

    poisoned = [numpy.ones(10, numpy.float32)]
    if comm.rank == comm.size - 1:
        poisoned[0][3] = numpy.nan
    reducer = MpiBucketAllreduce(poisoned, comm, compression="float16")
    reducer.start()
    reducer.launch(0)
    reducer.finish()
    assert numpy.isnan(poisoned[0][3]) and numpy.isfinite(numpy.delete(poisoned[0], 3)).all()
    print(f"rank {comm.rank} ok", flush=True)


if __name__ == "__main__":
    main()
