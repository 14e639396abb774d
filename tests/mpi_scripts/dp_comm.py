"""Communicator, helpers and average_metrics under mpiexec: every rank checks closed-form results."""
import numpy
from mpi4py import MPI

from mpiprop import distributed
from mpiprop.distributed import Communicator, average_metrics, wait_all


def check_isolated_from_user_traffic(comm: Communicator) -> None:
    world = MPI.COMM_WORLD
    if comm.size < 2 or comm.rank > 1:
        return
    if comm.rank == 0:
        world.send("user message", dest=1, tag=7)
        comm.send(numpy.full(3, 42.0), dest=1, tag=7)
    else:
        library = comm.recv(numpy.zeros(3), source=0, tag=7)
        assert (library == 42.0).all(), library
        assert world.recv(source=0, tag=7) == "user message"


def check_collectives(comm: Communicator) -> None:
    n, r = comm.size, comm.rank
    values = numpy.arange(6, dtype=numpy.float64) + r
    assert comm.allreduce(values) is values
    numpy.testing.assert_array_equal(values, n * numpy.arange(6) + n * (n - 1) / 2)
    assert comm.allreduce(numpy.array([r]), "max")[0] == n - 1

    many = [numpy.full(1000 * (k + 1), float(r + k), dtype=numpy.float32) for k in range(3)]
    wait_all([comm.iallreduce(a) for a in many])
    for k, a in enumerate(many):
        numpy.testing.assert_array_equal(a, numpy.float32(n * (n - 1) / 2 + n * k))

    half = numpy.full(8, 0.5 * (r + 1), dtype=numpy.float16)
    comm.allreduce(half)
    numpy.testing.assert_array_equal(half, numpy.float16(0.5 * n * (n + 1) / 2))

    root = n - 1
    table = numpy.arange(12, dtype=numpy.float32).reshape(3, 4) * (r + 1)
    column = table[:, 1]  # not contiguous: goes through a contiguous copy
    comm.bcast(column, root=root)
    numpy.testing.assert_array_equal(column, numpy.array([1, 5, 9], dtype=numpy.float32) * n)
    assert comm.bcast_object({"from": r}, root=root) == {"from": root}
    assert comm.allgather_object(r * r) == [k * k for k in range(n)]

    received = comm.sendrecv(numpy.full(4, r, dtype=numpy.int64), (r + 1) % n,
                             numpy.zeros(4, dtype=numpy.int64), (r - 1) % n)
    assert (received == (r - 1) % n).all(), received


def check_helpers(comm: Communicator) -> None:
    n, r = comm.size, comm.rank
    assert (distributed.rank(), distributed.size()) == (r, n)
    assert distributed.is_main_rank() == (r == 0) == comm.is_main
    assert comm.local_rank == distributed.local_rank(comm) == distributed.local_rank() == r  # one node
    assert comm.local_size == n

    correct_on_rank = [3 * k + 1 for k in range(n)]
    samples_on_rank = [10 * (k + 1) for k in range(n)]
    mine = {"accuracy": correct_on_rank[r] / samples_on_rank[r], "loss": float(r)}
    averaged = average_metrics(mine, comm, weights=samples_on_rank[r])
    assert abs(averaged["accuracy"] - sum(correct_on_rank) / sum(samples_on_rank)) < 1e-15, averaged
    assert average_metrics({"loss": float(r)})["loss"] == (n - 1) / 2
    try:
        average_metrics({"loss": 1.0} if r == 0 else {"lost": 1.0}, comm)
    except ValueError as error:
        assert "same metric names" in str(error), error
    else:
        raise AssertionError("different metric names must raise on every rank")

    even = comm.split(color=r % 2)
    assert even.size == (n + 1 - r % 2) // 2 and even.rank == r // 2
    assert even.allreduce(numpy.ones(1))[0] == even.size
    even.free()


def main() -> None:
    comm = Communicator()
    staged = Communicator(force_host_staging=True)
    assert not distributed.abort_handler_installed()  # a Communicator starts nothing
    distributed.start()
    distributed.start()  # again: nothing happens
    assert distributed.abort_handler_installed()
    for each in (comm, staged):
        check_isolated_from_user_traffic(each)
        check_collectives(each)
    check_helpers(comm)
    comm.barrier()
    print(f"rank {comm.rank} ok", flush=True)


if __name__ == "__main__":
    main()
