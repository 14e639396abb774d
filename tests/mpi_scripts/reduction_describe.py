"""DataParallel's gradient sync describes the reduction it chose and why not the others, under mpiexec -n 2.

Prints "DESCRIBE-OK rank=R" when rank R's descriptions are the expected ones.
"""
from mpi4py import MPI

import mpiprop.network as nn
from mpiprop.distributed import DataParallel, Float16Compression


def main() -> None:
    rank = MPI.COMM_WORLD.rank
    shared = DataParallel(nn.Sequential(nn.Linear(3, 2))).gradient_sync.describe()
    assert shared == ("gradient reduction: shared memory\n  not hierarchical: every rank is on one node\n"
                      "  not mpi: shared memory ranks above it"), shared
    compressed = DataParallel(nn.Sequential(nn.Linear(3, 2)), compression=Float16Compression()).gradient_sync
    why = "shared memory cannot carry Float16Compression(headroom=32768)"
    assert compressed.describe() == f"gradient reduction: mpi\n  not shared memory: {why}\n  not hierarchical: {why}"
    sharded = DataParallel(nn.Sequential(nn.Linear(3, 2)), shard_optimizer_state=2).gradient_sync.describe()
    assert sharded.startswith("gradient reduction: shared memory reduce-scatter\n"), sharded
    print(f"DESCRIBE-OK rank={rank}", flush=True)


if __name__ == "__main__":
    main()
