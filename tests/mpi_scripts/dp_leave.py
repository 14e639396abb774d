"""A data-parallel loop in which one rank leaves the job in the way the first argument names.

    mpiexec -n N python dp_leave.py MODE [STEPS]

MODE is "none" (every rank trains STEPS steps, default endless), "raise", "sys-exit-3",
"sys-exit-0", "os-exit-0" or "sleep" (the last rank stops arriving). The other ranks wait
for it in the gradient allreduce. Each rank prints "TRAINING-STARTS <unix time>" after its
first step, and the leaving rank "FAULT-AT <unix time>" just before it leaves.
"""
import os
import sys
import time

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel

FAULT_STEP = 3


def leave(mode: str) -> None:
    print(f"FAULT-AT {time.time()}", flush=True)
    if mode == "raise":
        raise RuntimeError("deliberate failure")
    if mode == "sys-exit-3":
        sys.exit(3)
    if mode == "sys-exit-0":
        sys.exit(0)
    if mode == "os-exit-0":
        os._exit(0)
    if mode == "sleep":
        time.sleep(600)


def main() -> None:
    mode = sys.argv[1]
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10**9
    nn.manual_seed(0)
    dp = DataParallel(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))
    x = numpy.ones((3, 4), dtype=numpy.float32)
    leaving = dp.rank == MPI.COMM_WORLD.Get_size() - 1 and mode != "none"
    for step in range(steps):
        if leaving and step == FAULT_STEP:
            time.sleep(0.5)  # let the other ranks block in the allreduce first
            leave(mode)
        out = dp(x)
        dp.backward(numpy.ones_like(out))
        if step == 0:
            print(f"TRAINING-STARTS {time.time()}", flush=True)
    print(f"rank {dp.rank} finished", flush=True)


if __name__ == "__main__":
    main()
