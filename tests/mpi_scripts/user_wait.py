"""The user's own mpi4py allreduce, put under the library's watch with `mpiprop.distributed.waiting_in`.

    mpiexec -n N python user_wait.py exit|stall

The last rank leaves ("exit": sys.exit(0)) or stops arriving ("stall": sleeps) at round 3
while the others wait in the allreduce. Prints "FAULT-AT <unix time>" just before.
"""
import sys
import time

from mpi4py import MPI

from mpiprop import distributed

FAULT_ROUND = 3


def main() -> None:
    mode = sys.argv[1]
    distributed.start()  # the guards that watch the wait
    world = MPI.COMM_WORLD
    leaving = world.Get_rank() == world.Get_size() - 1
    for round_number in range(1000):
        if leaving and round_number == FAULT_ROUND:
            time.sleep(0.5)  # let the others block in the allreduce first
            print(f"FAULT-AT {time.time()}", flush=True)
            if mode == "exit":
                sys.exit(0)
            time.sleep(600)
        with distributed.waiting_in("allreduce of the round number"):
            world.allreduce(round_number)
    print(f"rank {world.Get_rank()} finished", flush=True)


if __name__ == "__main__":
    main()
