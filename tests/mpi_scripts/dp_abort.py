"""Rank 1 raises during training while rank 0 waits in the gradient allreduce: the job must abort.

Run as plain `mpiexec -n N python dp_abort.py`; importing distributed installs the abort handler.
Prints "FAILURE-AT <unix time>" just before raising, so the caller can time the abort.
"""
import time

import numpy
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel

FAILING_RANK = 1


def main() -> None:
    nn.manual_seed(0)
    dp = DataParallel(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)))
    x = numpy.ones((3, 4), dtype=numpy.float32)
    for step in range(1000):
        out = dp(x)
        if dp.rank == FAILING_RANK and step == 2:
            time.sleep(0.5)  # let the other ranks block in the allreduce first
            print(f"FAILURE-AT {time.time()}", flush=True)
            raise RuntimeError(f"deliberate failure on rank {FAILING_RANK} at step {step}")
        dp.backward(numpy.ones_like(out))
    print(f"rank {MPI.COMM_WORLD.rank} finished without the failure", flush=True)


if __name__ == "__main__":
    main()
