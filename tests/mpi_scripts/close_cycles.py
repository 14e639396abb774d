"""Build and close DataParallel, ZeRO, Pipeline and tensor-parallel groups many times; print what the process holds.

Each cycle builds one of them (in turn: DataParallel with its buckets in shared memory, ZeRO-1
with the parameters handed over in shared memory, ZeRO-2 with shared gradient slots, a
Pipeline of 2 stages, a tensor-parallel group), trains one step where there is one, and closes
it (half in a `with` block). Every `--every` cycles rank 0 prints a JSON line: the cycle, this
process's resident memory, the bytes of /dev/shm mapped into it, and (before the first cycle
and after the last) how many communicators MPI can still make, counted by duplicating COMM_WORLD until
MPI refuses. Ends with "rank R ok". Usage: close_cycles.py CYCLES EVERY
"""
import json
import os
import sys

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel, Pipeline, start, tensor_parallel_group

PAGE = os.sysconf("SC_PAGE_SIZE")
MOST_COMMUNICATORS = 4096


def model() -> nn.Sequential:
    nn.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))


def train_once(strategy, optimizer) -> None:
    x = numpy.ones((4, 16), dtype=numpy.float32)
    y = numpy.zeros((4, 4), dtype=numpy.float32)
    strategy.train_step(x, y, nn.MSELoss())
    optimizer.step()
    optimizer.zero_grad()


def data_parallel(cycle: int, zero: int) -> None:
    dp = DataParallel(model(), shard_optimizer_state=zero)
    optimizer = dp.optimizer(nn.optim.SGD, lr=0.1) if zero else nn.optim.SGD(dp.parameters(), lr=0.1)
    train_once(dp, optimizer)
    if zero:
        assert dp.allreduce_kind.startswith("shared memory"), dp.allreduce_kind
    dp.close()
    dp.close()  # again: nothing happens


def pipeline(cycle: int) -> None:
    with Pipeline(model(), micro_batches=2) as pipe:
        train_once(pipe, nn.optim.SGD(pipe.parameters(), lr=0.1))


def tensor_group(cycle: int) -> None:
    with tensor_parallel_group(MPI.COMM_WORLD.Get_size()) as group:
        group.allreduce(numpy.ones(3))


BUILDS = [lambda c: data_parallel(c, 0), lambda c: data_parallel(c, 1), lambda c: data_parallel(c, 2), pipeline,
          tensor_group]


def mapped_shared_memory_bytes() -> int:
    total = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/dev/shm/"):
                start, end = (int(value, 16) for value in fields[0].split("-"))
                total += end - start
    return total


def free_communicators() -> int:
    """How many more communicators MPI makes before it refuses (collective)."""
    made = []
    try:
        while len(made) < MOST_COMMUNICATORS:
            made.append(MPI.COMM_WORLD.Dup())
    except MPI.Exception:
        pass
    for comm in made:
        comm.Free()
    return len(made)


def measure(cycle: int, count_communicators: bool) -> None:
    with open("/proc/self/statm") as statm:
        resident = int(statm.read().split()[1]) * PAGE
    figures = {"cycle": cycle, "rss_bytes": resident, "shm_bytes": mapped_shared_memory_bytes(),
               "free_communicators": free_communicators() if count_communicators else None}
    if MPI.COMM_WORLD.Get_rank() == 0:
        print("MEASURE " + json.dumps(figures), flush=True)


def main() -> None:
    cycles, every = int(sys.argv[1]), int(sys.argv[2])
    start()  # the job's guards hold a communicator of their own for the whole run
    measure(0, count_communicators=True)  # before any cycle; the count leaves MPI's own memory grown once
    for cycle in range(cycles):
        BUILDS[cycle % len(BUILDS)](cycle)
        if (cycle + 1) % every == 0:
            measure(cycle + 1, count_communicators=cycle + 1 == cycles)
    print(f"rank {MPI.COMM_WORLD.Get_rank()} ok", flush=True)


if __name__ == "__main__":
    main()
