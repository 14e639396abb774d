"""The benchmark's communication-free group under mpiexec: each rank's collectives give its own data alone and
return though the other ranks make none."""
import sys
from pathlib import Path

import numpy
from mpi4py import MPI

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples.benchmarks.communication_free import CommunicationFree  # noqa: E402
from mpiprop.distributed import Communicator  # noqa: E402

world = Communicator()
group = CommunicationFree(world, clone=False)
rank, size = group.rank, group.size
if rank == 0:  # the other ranks call nothing: a real collective would wait for them forever
    values = numpy.arange(4.0)
    assert group.allreduce(values) is values and (values == numpy.arange(4.0)).all(), values

    gathered = numpy.zeros(3 * size)
    gathered[:3] = [1.0, 2.0, 3.0]
    group.allgatherv(gathered, [3] * size)
    assert (gathered == numpy.tile([1.0, 2.0, 3.0], size)).all(), gathered

    try:
        group.allgatherv(numpy.zeros(2 + (size - 1) * 3), [2] + [3] * (size - 1))
    except ValueError as error:
        assert "parts of one size on every rank, got [2, 3" in str(error), error
    else:
        raise AssertionError("uneven parts were gathered")

    whole, part = numpy.arange(2.0 * size), numpy.zeros(2)
    group.ireduce_scatter(whole, part, [2] * size).wait()
    assert (part == [0.0, 1.0]).all(), part
    print("communication-free collectives: local", flush=True)
world.barrier()
