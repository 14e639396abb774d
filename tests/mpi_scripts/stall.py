"""Rank 1 stops answering at step 2 while rank 0 goes on into the gradient allreduce.

Run under `mpiexec -n 2` with MPIPROP_STALL_TIMEOUT set: rank 0's watchdog must abort the job.
Prints "STALL-BEGINS <unix time>" when rank 1 goes silent, so the caller can time the abort.
"""
import time

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel

SILENT_RANK = 1


def main() -> None:
    nn.manual_seed(0)
    dp = DataParallel(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))
    x = numpy.ones((3, 4), dtype=numpy.float32)
    for step in range(1000):
        out = dp(x)
        if dp.rank == SILENT_RANK and step == 2:
            print(f"STALL-BEGINS {time.time()}", flush=True)
            time.sleep(300)
        dp.backward(numpy.ones_like(out))
    print(f"rank {MPI.COMM_WORLD.rank} finished without the stall", flush=True)


if __name__ == "__main__":
    main()
