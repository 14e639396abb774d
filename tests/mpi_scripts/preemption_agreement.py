"""Ranks agree on a preemption signal that only the last rank got, with one non-blocking allreduce of one integer
per check, read at the next check: the signal that came before the second check is agreed at the third.

Prints "PREEMPTION-OK rank=R <signal name> <collectives per check>" once every rank has agreed.
"""
import os
import signal

from mpiprop.distributed.data_parallel.data_parallel_ranks import DataParallelRanks
from mpiprop.distributed.transport.communicator import Communicator
from mpiprop.network.training.preemption import PreemptionWatch


class CountedCommunicator(Communicator):
    """Counts the collectives a check calls: allreduces of arrays, with their sizes, and allgathers of objects."""

    calls: list[str] = []

    def allreduce(self, array, op="sum"):
        self.calls.append(f"allreduce of {array.size}")
        return super().allreduce(array, op)

    def iallreduce(self, array, op="sum"):
        self.calls.append(f"iallreduce of {array.size}")
        return super().iallreduce(array, op)

    def allgather_object(self, value):
        self.calls.append("allgather_object")
        return super().allgather_object(value)


def main() -> None:
    comm = CountedCommunicator()
    ranks = DataParallelRanks(comm)
    with PreemptionWatch() as watch:
        assert not watch.agreed(ranks) and watch.signal_name is None, comm.rank
        if comm.rank == comm.size - 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        assert not watch.agreed(ranks), comm.rank
        assert watch.agreed(ranks), comm.rank
    assert watch.signal_name == "SIGUSR1", (comm.rank, watch.signal_name)
    assert comm.calls == ["iallreduce of 1"] * 3, (comm.rank, comm.calls)
    print(f"PREEMPTION-OK rank={comm.rank} {watch.signal_name} {comm.calls[-1]}", flush=True)


if __name__ == "__main__":
    main()
