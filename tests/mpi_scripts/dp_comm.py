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


def check_collectives_of_the_door(comm: Communicator) -> None:
    """The calls DataParallel, ZeRO and the pipeline make through the Communicator, against closed forms."""
    n, r = comm.size, comm.rank
    assert comm.gather_object(r + 10, root=n - 1) == ([k + 10 for k in range(n)] if r == n - 1 else None)
    assert comm.allreduce_object(r, "max") == n - 1 and comm.allreduce_object(r + 1) == n * (n + 1) // 2

    counts = [k + 1 for k in range(n)]  # rank k holds k + 1 elements, at offset k * (k + 1) / 2
    parts = numpy.zeros(sum(counts))
    parts[r * (r + 1) // 2:][:r + 1] = r
    assert comm.allgatherv(parts, counts) is parts
    numpy.testing.assert_array_equal(parts, numpy.repeat(numpy.arange(n), counts))

    equal = numpy.zeros(3 * n)
    equal[3 * r:3 * r + 3] = r
    assert comm.allgatherv(equal, [3] * n) is equal
    numpy.testing.assert_array_equal(equal, numpy.repeat(numpy.arange(n), 3))

    whole = numpy.arange(sum(counts), dtype=numpy.float32) * (r + 1)
    mine = numpy.zeros(counts[r], dtype=numpy.float32)
    comm.ireduce_scatter(whole, mine, counts).then(lambda: mine.__imul__(2)).wait()
    start = r * (r + 1) // 2
    numpy.testing.assert_array_equal(mine, 2 * numpy.arange(start, start + r + 1) * n * (n + 1) / 2)

    odd_left_out = comm.split(None if r % 2 else 0)
    assert (odd_left_out is None) == bool(r % 2)
    if odd_left_out is not None:
        assert odd_left_out.size == (n + 1) // 2 and odd_left_out.rank == r // 2
    assert comm.split_by_node().size == comm.local_size == n  # one node
    assert comm.tag_bound >= 32767

    window = comm.allocate_shared(8)
    numpy.frombuffer(window.memory(r), dtype=numpy.int64)[0] = 100 + r
    window.sync()
    comm.barrier()
    window.sync()
    assert [int(numpy.frombuffer(window.memory(k), dtype=numpy.int64)[0]) for k in range(n)] == \
        [100 + k for k in range(n)]
    comm.barrier()
    window.free()

    if n > 1 and r < 2:
        if r == 0:
            comm.send_object({"to": 1}, 1, tag=5)
        else:
            while comm.probe() is None:
                pass
            assert comm.probe() == (0, 5) and comm.recv_object(0, 5) == {"to": 1}
    assert comm.probe() is None


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
    check_collectives_of_the_door(comm)
    check_helpers(comm)
    comm.barrier()
    rank = comm.rank
    comm.close()
    print(f"rank {rank} ok", flush=True)


if __name__ == "__main__":
    main()
