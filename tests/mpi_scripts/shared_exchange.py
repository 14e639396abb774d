"""Sums and gathers through a shared window (Communicator.share_memory) against MPI's own, under mpiexec.

Checks, on every rank, for float32, float64 and int64 arrays above and below the window's smallest
size, repeated so that both slots are reused and the window grows: the allreduce equals MPI's
(bit for bit on 2 ranks) and is bit-identical on every rank; the reduce-scatter with uneven
counts, into a contiguous and a strided part, and the allgather with uneven counts equal MPI's;
a part of the wrong size raises on every rank; a /dev/shm without room makes rank 0 warn and MPI
do the work. Prints "shared exchange: agrees with MPI" on rank 0 (or, under Open MPI with its UCX
one-sided component loaded, checks that MPI keeps every collective and says so).
"""
import sys
import warnings

import numpy

from mpiprop.distributed import Communicator
from mpiprop.distributed.transport import shared_exchange, shared_memory_room
from mpiprop.distributed.transport.shared_memory_room import window_prints_errors

world = Communicator()
shared, plain = Communicator(world), Communicator(world)
rank, size = world.rank, world.size
if window_prints_errors():  # Open MPI without `--mca osc ^ucx`: no windows, MPI does it all
    assert not shared.share_memory()
    if rank == 0:
        print("shared exchange: MPI only (Open MPI's UCX one-sided component is loaded)", flush=True)
    sys.exit(0)
assert shared.share_memory(), "the ranks of one mpiexec on one machine share a node"
rng = numpy.random.default_rng(rank)
ELEMENTS = [10, shared_exchange.SMALLEST_BYTES // 4 + 3, 50_000, 20_000, 300_000]  # below, above, growing, smaller


def values(count, dtype):
    if numpy.dtype(dtype).kind == "i":
        return rng.integers(-1000, 1000, count).astype(dtype)
    return rng.standard_normal(count).astype(dtype)


def uneven_counts(total):
    """array_split's counts, one element moved from the first rank to the last: never all alike."""
    counts = [total // size + (1 if rank_ < total % size else 0) for rank_ in range(size)]
    counts[0], counts[-1] = counts[0] - 1, counts[-1] + 1
    return counts


def same_as(ours, mpis, dtype):
    if size == 2 or numpy.dtype(dtype).kind == "i":
        return numpy.array_equal(ours, mpis)
    return numpy.allclose(ours, mpis, rtol=1e-6 if dtype == numpy.float32 else 1e-13, atol=1e-5)


for repeat in range(2):
    for count in ELEMENTS:
        for dtype in (numpy.float32, numpy.float64, numpy.int64):
            array = values(count, dtype)
            ours, mpis = array.copy(), array.copy()
            assert shared.allreduce(ours) is ours
            plain.allreduce(mpis)
            assert same_as(ours, mpis, dtype), (count, dtype, numpy.abs(ours - mpis).max())
            everyones = world.allgather_object(ours.tobytes())
            assert all(copy == everyones[0] for copy in everyones), "the ranks' sums differ"

            counts = uneven_counts(count)
            part, mpi_part = numpy.empty(counts[rank], dtype), numpy.empty(counts[rank], dtype)
            shared.ireduce_scatter(array, part, counts).wait()
            plain.ireduce_scatter(array, mpi_part, counts).wait()
            assert same_as(part, mpi_part, dtype), (count, dtype)
            strided = numpy.zeros((counts[rank], 2), dtype)[:, 0]
            shared.ireduce_scatter(array, strided, counts).wait()
            assert same_as(strided, mpi_part, dtype), (count, dtype)

            gathered, mpi_gathered = numpy.zeros(count, dtype), numpy.zeros(count, dtype)
            start = sum(counts[:rank])
            gathered[start:start + counts[rank]] = mpi_gathered[start:start + counts[rank]] = part
            shared.allgatherv(gathered, counts)
            plain.allgatherv(mpi_gathered, counts)
            assert numpy.array_equal(gathered, mpi_gathered), (count, dtype)
assert shared._exchange._slot_bytes >= 300_000 * 8, shared._exchange._slot_bytes  # the window grew to the largest

try:
    shared.ireduce_scatter(numpy.zeros(8192 * size), numpy.zeros(3), [8192] * size)
except ValueError as error:
    assert f"counts[{rank}] = 8192 elements of float64, got 3" in str(error), error
else:
    raise AssertionError("a part of the wrong size was accepted")

measured = shared_memory_room.free_shared_memory_bytes
shared_memory_room.free_shared_memory_bytes = lambda: 2**10
cramped = Communicator(world)
cramped.share_memory()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    array = values(100_000, numpy.float64)
    ours, mpis = array.copy(), array.copy()
    cramped.allreduce(ours)
    plain.allreduce(mpis)
shared_memory_room.free_shared_memory_bytes = measured
assert same_as(ours, mpis, numpy.float64)
messages = [str(warning.message) for warning in caught]
if rank == 0:
    assert len(messages) == 1 and "tensor_parallel_group(..., shared_memory=False)" in messages[0], messages
else:
    assert messages == [], messages
assert cramped._exchange._window is None  # MPI did it

for communicator in (cramped, plain, shared):
    communicator.free()
if rank == 0:
    print("shared exchange: agrees with MPI", flush=True)
